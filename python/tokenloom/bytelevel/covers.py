"""The covers of one growing byte prefix: the Rust ``CoverTree`` of exact paths plus, per node,
what ByteLM knows about it.

A node is an *exact path*: a token sequence decoding to exactly ``prefix[:end]`` (node 0, the
root, is the empty path). Per node, :class:`CoverState` keeps

- ``token``, ``parent``, ``depth``, ``end``: the tree's facts (``depth`` = tokens on the path);
- ``logmass``: ``log Q(path)`` (``-inf`` when the model gives the path no mass);
- ``key``: the id of the path's token prefix in the :class:`~tokenloom.bytelevel.distcache.DistCache`;
- ``q``: ``Q(. | path)``, a float32 row [width] where the model runs (:mod:`.rows`; an empty
  array: a dead path), only while it
  can still be read: for active nodes (they sum next-byte masses and get children) and for
  parents of active nodes still waiting for theirs (the look-ahead reads them);
  :meth:`CoverState.prune` drops the rest;
- ``slot``: the node's KV-cache slot once a forward has fed its token.

``spec_slot`` maps token-prefix ids of rows fed before their node exists (look-ahead rows, and
the exact paths a planned forward computed ahead of their parents' expansion) to their KV
slots; a node created later for that prefix adopts the slot. The byte sums (:meth:`masses`,
:meth:`logprob`) run over the tree's active nodes, through the rows' owner (:mod:`.rows`: the
Rust core on the host, torch ops on an accelerator).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from tokenloom import _core

__all__ = ["CoverState", "NODE_BYTES"]

#: Estimated bytes per tree node for the memory bound: the Rust node plus its entries in the
#: per-node tables below (distributions are counted separately).
NODE_BYTES = 640


class CoverState:
    """Covers of one prefix: the Rust cover tree plus masses, distributions and KV slots.

    Args:
        index: the vocabulary's ``ByteIndex``.
        canonical: canonical covers only, or all covers.
        intern: ``intern(parent_key, token) -> key`` (``DistCache.key``).
        rows: the owner of the distributions (:class:`~tokenloom.bytelevel.rows.HostRows` or
            ``DeviceRows``), which reads the numbers the covers need off them.
    """

    def __init__(self, index: Any, canonical: bool, intern: Callable[[int, int], int], rows: Any) -> None:
        self.tree = _core.CoverTree(index, canonical)
        self.intern = intern
        self.rows = rows
        self.logmass: Dict[int, float] = {0: 0.0}
        self.depth: Dict[int, int] = {0: 0}
        self.key: Dict[int, int] = {0: 0}
        self.q: Dict[int, Any] = {}
        self.slot: Dict[int, int] = {}
        self.token: Dict[int, int] = {0: -1}
        self.parent: Dict[int, int] = {0: -1}
        self.end: Dict[int, int] = {0: 0}
        self.spec_slot: Dict[int, int] = {}
        self.primed: Optional[bytes] = None  # the prefix the tokenizer's encoding was primed for

    # ------------------------------------------------------------------ growth
    @property
    def prefix(self) -> bytes:
        return self.tree.prefix

    def register(self, nodes: Sequence[int]) -> None:
        """Record token, parent, depth, mass and prefix key of freshly created nodes."""
        infos = [self.tree.info(n) for n in nodes]
        probs = self.rows.probs_at([(self.q[info[1]], info[0]) for info in infos])
        for n, (tok, par, _start, end, _exp, _live), qp in zip(nodes, infos, probs):
            self.token[n], self.parent[n], self.end[n] = tok, par, end
            self.depth[n] = self.depth[par] + 1
            self.logmass[n] = self.logmass[par] + (math.log(qp) if qp > 0 else -math.inf)
            self.key[n] = self.intern(self.key[par], tok)
            slot = self.spec_slot.pop(self.key[n], None)
            if slot is not None:
                self.slot[n] = slot

    def push(self, b: int) -> None:
        """Append byte ``b`` to the prefix: new exact paths are registered, dead ones pruned."""
        self.register(self.tree.push(b))
        self.prune()

    def expand(self, n: int, q: Optional[np.ndarray] = None) -> None:
        """Create the children of node ``n``, giving it its distribution ``q`` first (None: it
        has one already)."""
        if q is not None:
            self.q[n] = q
        self.register(self.tree.expand(n))

    def kill(self, n: int) -> None:
        """A node without mass: an empty distribution, children without mass."""
        self.expand(n, np.zeros(0, dtype=np.float32))

    def prune(self) -> None:
        """Drop the distributions nothing reads again: of nodes that are neither active nor the
        parent of an active node still waiting for its own."""
        active = self.tree.active()
        keep = set(active)
        keep.update(self.parent[n] for n in active if n not in self.q)
        for n in [n for n in self.q if n not in keep]:
            del self.q[n]

    # ------------------------------------------------------------------ queries
    def pending(self) -> List[int]:
        """Active nodes without a distribution yet."""
        return [n for n in self.tree.active() if n not in self.q]

    def dists_held(self) -> int:
        """Non-empty distributions held (some may be shared with the DistCache)."""
        return sum(1 for q in self.q.values() if len(q))

    def path_slots(self, n: int, new_slot: Optional[Dict[int, int]] = None) -> List[int]:
        """KV slots of node ``n`` and its ancestors (root excluded), ascending; ``new_slot``
        (rows of the forward being built) wins over older slots."""
        out = []
        while n != 0:
            out.append(new_slot[n] if new_slot is not None and n in new_slot else self.slot[n])
            n = self.parent[n]
        return sorted(out)

    def rows_for(self, nodes: Sequence[int]) -> List[int]:
        """The nodes a forward must feed to give ``nodes`` their distributions, by depth (an
        ancestor before its descendants): ``nodes`` and their ancestors without a KV slot.
        Each of ``nodes`` always gets a row (it may hold the KV slot of a look-ahead row whose
        distribution was evicted from the cache)."""
        rows: List[int] = []
        seen = set()
        for n in nodes:
            if n in seen:
                continue
            chain = [n]
            seen.add(n)
            m = self.parent[n]
            while m not in self.slot and m not in seen:
                chain.append(m)
                m = self.parent[m]
            for m in reversed(chain):
                seen.add(m)
                rows.append(m)
        rows.sort(key=lambda r: self.depth[r])
        return rows

    def live_slots(self) -> List[Tuple[int, int]]:
        """(slot, node) of every node some active path goes through, by slot."""
        needed = set()
        for n in self.tree.active():
            m = n
            while m != 0 and m not in needed:
                needed.add(m)
                m = self.parent[m]
        return sorted((self.slot[n], n) for n in needed if n in self.slot)

    def renumber_slots(self, kept: Sequence[Tuple[int, int]], first: int, root_slot: int) -> None:
        """After the KV cache kept only ``kept`` (slot, node) pairs, moved to ``first, first+1,
        ...``: the nodes' new slots; look-ahead slots are gone."""
        self.slot = {0: root_slot}
        self.spec_slot = {}
        for i, (_, n) in enumerate(kept):
            self.slot[n] = first + i

    def expanded_live(self, end_before: Optional[int] = None) -> Tuple[List[int], List[Any], List[float]]:
        """(nodes, distributions, log masses) of active nodes with a non-empty distribution, a
        live trie state and mass (and ``end < end_before`` when given)."""
        nodes, qs, lms = [], [], []
        for n in self.tree.active():
            lm = self.logmass[n]
            if lm == -math.inf or (end_before is not None and self.end[n] >= end_before):
                continue
            q = self.q.get(n)
            if q is not None and len(q) and self.tree.info(n)[5]:
                nodes.append(n)
                qs.append(q)
                lms.append(lm)
        return nodes, qs, lms

    def rests(self, nodes: Sequence[int]) -> List[bytes]:
        """The prefix bytes after each node's end (what a token after it must start with)."""
        prefix = self.tree.prefix
        return [prefix[self.end[n] :] for n in nodes]

    def masses(self) -> Tuple[np.ndarray, float, float]:
        """Next-byte masses over the expanded live nodes (end-of-text: the rows' special tokens).

        Returns:
            (m, ref, pending): m float64 [257] relative masses of the 256 bytes and end-of-text
            (scaled by ``exp(-ref)``), ``ref`` the log scale, ``pending`` the mass of nodes
            without a distribution yet, on the same scale (a bound on what they can add).
        """
        nodes, qs, lms = self.expanded_live()
        pending_lm = [self.logmass[n] for n in self.pending() if self.logmass[n] > -math.inf]
        ref = max(lms + pending_lm) if (lms or pending_lm) else 0.0
        scales = [math.exp(x - ref) for x in lms]
        out = np.zeros(257, dtype=np.float64)
        if nodes:
            prefix = self.tree.prefix
            at_end = [self.end[n] == len(prefix) for n in nodes]
            out[:256], _, out[256] = self.rows.masses(self.tree, nodes, qs, scales, self.rests(nodes), at_end)
        pending = float(sum(math.exp(x - ref) for x in pending_lm))
        return out, ref, pending

    def logprob(self) -> float:
        """log P(the text starts with the prefix): the mass of every cover, ``-inf`` for none
        (all nodes must be expanded)."""
        nodes, qs, lms = self.expanded_live(end_before=len(self.tree.prefix))
        if not nodes:
            return -math.inf
        ref = max(lms)
        scales = [math.exp(x - ref) for x in lms]
        by_byte, exact, _ = self.rows.masses(self.tree, nodes, qs, scales, self.rests(nodes), [False] * len(nodes))
        total = float(by_byte.sum()) + exact
        return ref + math.log(total) if total > 0 else -math.inf

    def greedy_step(self) -> Tuple[Optional[int], List[int]]:
        """One step of the exact, lazy argmax of P(. | prefix): ``(byte, [])`` once no pending
        path can change the argmax (256 = end-of-text), else ``(None, nodes)``: the heaviest
        pending nodes whose mass could (expand them and ask again).

        Raises:
            ValueError: the prefix has probability 0.
        """
        m, ref, pending = self.masses()
        order = np.argsort(-m, kind="stable")
        top, second = m[order[0]], m[order[1]]
        pend = [n for n in self.pending() if self.logmass[n] > -math.inf]
        if not pend or top > second + pending:
            if not m.sum() > 0:
                raise ValueError("the prefix has probability 0 under the model")
            return int(order[0]), []
        pend.sort(key=lambda n: -self.logmass[n])
        masses = np.exp(np.array([self.logmass[n] - ref for n in pend]))
        rest = masses.sum() - np.cumsum(masses)
        k = int(np.searchsorted(-rest, -(top - second), side="right")) + 1 if top > second else 1
        return None, pend[: max(1, min(k, len(pend)))]
