"""Pure-Python reference of the DySpec tree builder (heapq), same semantics and same float
operations as the Rust builder, so that results match bit for bit; plus the textbook
sequential greedy (one node per draft call) and a brute-force optimum for tiny trees."""

from __future__ import annotations

import heapq
import itertools
from typing import Callable, Dict, List, Optional, Sequence, Tuple

M64 = (1 << 64) - 1
K0 = 0x9E3779B97F4A7C15
K1 = 0xD1B54A32D192ED03
K2 = 0xAEF17502108EF2D9


def mix64(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def rng_bits(seed: int, stream: int, counter: int) -> int:
    """The shared counter-based generator of ``rust/core/src/rng.rs``."""
    h = mix64(seed ^ K0)
    h = mix64(h ^ ((stream * K1) & M64))
    return mix64(h ^ ((counter * K2) & M64))


def uniform(seed: int, stream: int, node: int, i: int) -> float:
    """Draw ``i`` at ``node`` of tree ``stream``: ``rng::uniform(seed, stream, node << 32 | i)``."""
    return float(rng_bits(seed, stream, ((node << 32) | i) & M64) >> 11) * (1.0 / float(1 << 53))


def top_k(probs: Sequence[float], k: int) -> List[int]:
    cols = [j for j, p in enumerate(probs) if p > 0.0]
    return sorted(cols, key=lambda j: (-probs[j], j))[:k]


def sample_without_replacement(probs: Sequence[float], k: int, seed: int, tree: int, node: int) -> List[int]:
    """Successive inverse-CDF draws on the residual row (same arithmetic as the Rust code)."""
    m = min(k, sum(1 for p in probs if p > 0.0))
    prefix = [0.0]
    acc = 0.0
    for p in probs:
        acc += p
        prefix.append(acc)
    taken: List[int] = []
    out: List[int] = []
    taken_mass = 0.0
    for i in range(m):
        target = uniform(seed, tree, node, i) * (acc - taken_mass)

        def res(j: int) -> float:
            removed = 0.0
            for c in taken:
                if c > j:
                    break
                removed += probs[c]
            return prefix[j + 1] - removed

        lo = next((j for j in range(len(probs)) if res(j) > target), len(probs) - 1)
        usable = [j for j in range(len(probs)) if probs[j] > 0.0 and j not in taken]
        after = [j for j in usable if j >= lo]
        pick = after[0] if after else usable[-1]
        taken_mass += probs[pick]
        taken.append(pick)
        taken.sort()
        out.append(pick)
    return out


class RefBuilder:
    """Same API subset as ``tokenloom.DynamicTreeBuilder`` (reset / frontier / expand / tree)."""

    def __init__(self, budget: int, max_depth: int, k: int = 8, sampled: bool = False, seed: int = 0,
                 max_frontier: Optional[int] = None):
        self.budget, self.max_depth, self.k = budget, max_depth, k
        self.sampled, self.seed, self.max_frontier = sampled, seed, max_frontier
        self.trees = 0

    def reset(self, root: int) -> None:
        # node: [token, parent, depth, key, value, row, frozen]
        self.nodes: List[list] = [[root, -1, 0, 1.0, 1.0, -1, False]]
        self.selected: List[int] = []
        self.front: List[int] = [0]
        self.rows = 0
        self.trees += 1

    def frontier(self) -> List[int]:
        return list(self.front)

    @property
    def done(self) -> bool:
        return not self.front

    def expand(self, node_ids: Sequence[int], ids: Sequence[Sequence[int]], probs: Sequence[Sequence[float]]) -> None:
        assert sorted(node_ids) == sorted(self.front)
        first_new = len(self.nodes)
        for i, r in sorted((n, r) for r, n in enumerate(node_ids)):
            node = self.nodes[i]
            node[5] = self.rows + r
            row = [float(p) for p in probs[r]]
            if self.sampled:
                picks = sample_without_replacement(row, self.k, self.seed, self.trees, i)
            else:
                picks = top_k(row, self.k)
            v, cap, depth = node[4], node[3], node[2] + 1
            taken = 0.0
            for j in picks:
                q = row[j]
                key = v * max(1.0 - taken, 0.0) if self.sampled else v * q
                taken += q
                self.nodes.append([int(ids[r][j]), i, depth, min(key, cap), v * q, -1, False])
        self.rows += len(node_ids)
        heap = [(-self.nodes[n][3], n) for n in self.selected + list(range(first_new, len(self.nodes)))]
        heapq.heapify(heap)
        self.selected = [heapq.heappop(heap)[1] for _ in range(min(self.budget, len(heap)))]
        self.front = []
        cap = self.max_frontier or len(self.nodes)
        for n in self.selected:
            node = self.nodes[n]
            if node[5] >= 0 or node[6] or node[2] >= self.max_depth:
                continue
            if len(self.front) < cap:
                self.front.append(n)
            else:
                node[6] = True

    def tree(self) -> Dict[str, list]:
        order = sorted([0] + self.selected, key=lambda n: (self.nodes[n][2], n))
        pos = {n: i for i, n in enumerate(order)}
        nodes = [self.nodes[n] for n in order]
        return {
            "tokens": [n[0] for n in nodes],
            "parents": [-1 if n[1] < 0 else pos[n[1]] for n in nodes],
            "depths": [n[2] for n in nodes],
            "scores": [n[4] for n in nodes],
            "draft_rows": [n[5] for n in nodes],
            "node_ids": order,
        }


RowFn = Callable[[Tuple[int, ...]], Tuple[List[int], List[float]]]


def run(builder, root: int, row_fn: RowFn, path_of: Callable[[int], Tuple[int, ...]]):
    """Drive a builder (Rust or reference) to completion; row_fn(path) -> (ids, probs)."""
    builder.reset(root)
    while not builder.done:
        f = builder.frontier()
        ids_ = list(f.ids) if hasattr(f, "ids") else f
        rows = [row_fn(path_of(int(n))) for n in ids_]
        builder.expand(ids_, [r[0] for r in rows], [r[1] for r in rows])
    return builder.tree()


def sequential_greedy(root: int, row_fn: RowFn, budget: int, max_depth: int, k: int) -> List[Tuple[Tuple[int, ...], float]]:
    """The textbook DySpec loop: pop the best candidate, add it, push its top-k children."""
    counter = itertools.count()
    heap: List[Tuple[float, int, Tuple[int, ...], float]] = []

    def push_children(path: Tuple[int, ...], v: float) -> None:
        if len(path) - 1 >= max_depth:
            return
        ids, probs = row_fn(path)
        for j in top_k(probs, k):
            heapq.heappush(heap, (-(v * probs[j]), next(counter), path + (ids[j],), v * probs[j]))

    push_children((root,), 1.0)
    chosen = []
    while heap and len(chosen) < budget:
        _, _, path, v = heapq.heappop(heap)
        chosen.append((path, v))
        push_children(path, v)
    return chosen


def brute_force_best(root: int, row_fn: RowFn, size: int, max_depth: int, k: int) -> float:
    """Best sum of path values over subtree-closed node sets of ``size`` nodes (tiny trees)."""
    paths: List[Tuple[int, ...]] = [(root,)]
    parent, value = [-1], [1.0]
    i = 0
    while i < len(paths):
        if len(paths[i]) - 1 < max_depth:
            ids, probs = row_fn(paths[i])
            for j in top_k(probs, k):
                paths.append(paths[i] + (ids[j],))
                parent.append(i)
                value.append(value[i] * probs[j])
        i += 1
    n = len(paths)
    assert n <= 16
    best = 0.0
    for combo in itertools.combinations(range(1, n), min(size, n - 1)):
        s = set(combo) | {0}
        if all(parent[v] in s for v in combo):
            best = max(best, sum(value[v] for v in combo))
    return best
