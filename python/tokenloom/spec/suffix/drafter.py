"""``generate(method="merged")`` and ``generate(method="suffix")``: one budgeted draft tree from
suffix matches (this request's tokens, earlier requests' outputs) and recycled candidates.

Each step:

1. the longest earlier match of the context's end in this request's :class:`SuffixIndex` and
   in the cross-request :class:`SuffixCache` each give a continuation tree with count ratios;
   their trie union is the *suffix trie* of this step;
2. the tree is grown by the DySpec dynamic-tree builder (:class:`tokenloom.DynamicTreeBuilder`,
   the one best-first heap of tokenloom) fed by a model-free draft distribution: the "draft
   row" of a node lists the suffix children of its suffix-trie node and (``merged``) the
   recycler's candidates after its token, each with its calibrated probability of being the
   target's next token (:class:`~tokenloom.spec.suffix.calibration.Calibration`; a candidate
   offered by both gets ``1 - (1 - p_s)(1 - p_r)``; a row summing above 1 keeps its
   largest estimate and scales the others into the rest, :func:`cap_rows`). A
   node's score is the product of these along its path, its estimated acceptance probability;
   the builder keeps the ``budget`` best (a subtree-closed set). A long suffix match so
   becomes a deep chain, a miss falls back to recycled candidates, and both can share a tree;
3. with ``budget="auto"`` the builder grows up to ``max_budget`` nodes and the tree is cut to
   the N best maximising ``(1 + sum of the N best scores) / cost(N + 1)`` with this machine's
   calibrated step cost (:func:`tokenloom.spec.sizing.calibrate_step_cost`); N = 0 is a plain
   step.

After verification the calibration learns at every accepted node (whose next token the
verification revealed) from every candidate offered there; the index takes the emitted
tokens, the recycler the target's top-k at every tree position; when the request ends its
output joins the cross-request cache. The draft is deterministic (``draft_probs=None``):
greedy output is exactly the target's greedy output, and sampling is lossless through the
deterministic-draft tree rule.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from tokenloom import _core
from tokenloom._arrays import as_count
from tokenloom.spec.base import DraftTree
from tokenloom.spec.sizing import StepCost
from tokenloom.spec.suffix.calibration import RECYCLE_DEPTHS, Calibration
from tokenloom.spec.suffix.store import DEFAULT_MAX_DEPTH, SuffixCache, SuffixIndex
from tokenloom.spec.topk import top_k_ids

__all__ = ["DEFAULT_BUDGET", "DEFAULT_MAX_BUDGET", "MergedDrafter", "best_nodes", "cap_rows", "subtree", "top_path"]

#: Draft nodes per tree with a fixed budget.
DEFAULT_BUDGET = 16
#: Most draft nodes ``budget="auto"`` considers.
DEFAULT_MAX_BUDGET = 32
#: Deepest draft node.
DEFAULT_TREE_DEPTH = 16
#: Longest context suffix matched.
DEFAULT_MAX_MATCH = 16
#: Most children per node.
DEFAULT_CHILDREN = 8
#: Most prompt positions used to seed recycler rows.
SEED_MAX_POSITIONS = 1024


def best_nodes(scores: np.ndarray, depths: np.ndarray, cost: StepCost) -> np.ndarray:
    """The nodes to keep of a scored tree (node 0 the root, BFS order, a child never scored
    above its parent): the root and the N best draft nodes, N maximising
    ``(1 + sum of their scores) / cost(N + 1)``.

    Returns:
        int64 [N + 1], increasing (so parents stay before children).
    """
    t = int(scores.shape[0])
    order = sorted(range(1, t), key=lambda i: (-scores[i], depths[i], i))
    cum = np.concatenate([[0.0], np.cumsum(scores[order])])
    seconds = np.interp(np.arange(1, t + 1), cost.tokens, cost.seconds)
    n = int(np.argmax((1.0 + cum) / seconds))
    return np.array(sorted([0] + order[:n]), dtype=np.int64)


def cap_rows(probs: np.ndarray) -> np.ndarray:
    """Make each row a sub-distribution while keeping its most confident estimates.

    The candidates of a row are exclusive events (at most one is the target's next token), but
    their calibrated estimates come from separate classes and can sum above 1. Scaling the whole
    row down would also shrink a near-certain candidate (a long suffix match at 0.95 offered
    beside recycled candidates would drop to ~0.6); instead, in a row summing above 1, the
    largest estimate is kept (``n`` candidates tied at it keep ``min(max, 1 / n)`` each) and the
    others share what is left in their proportions (scaled down only when they sum above it).
    A row summing to at most 1 is unchanged. The result does not depend on the order of a row.

    Args:
        probs: float [rows, width] (or [width]), each in [0, 1].

    Returns:
        float, the same shape: the capped estimates.
    """
    p = np.asarray(probs, dtype=np.float64)
    flat = p.reshape(1, -1) if p.ndim == 1 else p
    total = flat.sum(axis=1, keepdims=True)
    if not (total > 1.0).any():
        return p.copy()
    best = flat.max(axis=1, keepdims=True)
    is_best = flat == best
    n = is_best.sum(axis=1, keepdims=True)
    keep = np.minimum(best, 1.0 / n)
    rest, room = total - n * best, 1.0 - n * keep
    factor = np.where(rest > room, room / np.maximum(rest, 1e-300), 1.0)
    out = np.where(total > 1.0, np.where(is_best, keep, flat * factor), flat)
    return out.reshape(p.shape)


def top_path(scores: np.ndarray, parents: np.ndarray, token_cost: float = 0.0) -> np.ndarray:
    """The best chain of a scored tree (node 0 the root, parents before children, a node's
    score its estimated probability of being reached and accepted): the root-to-node path with
    the largest sum of ``score - token_cost`` over its draft nodes, i.e. the most expected
    accepted tokens of one chain, less ``token_cost`` per token proposed (0: the longest gain;
    a draft token must be worth more than ``token_cost`` accepted tokens). Ties go to the
    shorter path, then the lower node index.

    Returns:
        int64 [L + 1]: the path's nodes, root first (``[0]`` when no draft node scores above 0).
    """
    t = int(scores.shape[0])
    gain = np.zeros(t)
    for i in range(1, t):
        gain[i] = gain[int(parents[i])] + float(scores[i]) - token_cost
    depth = np.zeros(t, dtype=np.int64)
    for i in range(1, t):
        depth[i] = depth[int(parents[i])] + 1
    best = min(range(t), key=lambda i: (-gain[i], depth[i], i))
    path = [best]
    while path[-1] != 0:
        path.append(int(parents[path[-1]]))
    return np.array(path[::-1], dtype=np.int64)


def subtree(keep: np.ndarray, tokens: np.ndarray, parents: np.ndarray, depths: np.ndarray) -> DraftTree:
    """The tree of the nodes ``keep`` (increasing, subtree-closed) of a flat tree."""
    remap = np.full(tokens.shape[0], -1, dtype=np.int64)
    remap[keep] = np.arange(keep.size)
    new_parents = parents[keep].copy()
    new_parents[1:] = remap[new_parents[1:]]
    return DraftTree(tokens[keep].copy(), new_parents, depths[keep].copy())


class MergedDrafter:
    """Suffix matches and recycled candidates in one budgeted tree (see the module docs).

    Args:
        recycler: the :class:`~tokenloom.spec.recycling.recycler.TokenRecycler` whose rows
            give recycled candidates and that learns the target's top-k (None: suffix only).
        cache: the cross-request :class:`SuffixCache` to draft from and to add this request's
            output to (None: none).
        budget: draft nodes per tree (int >= 1), or ``"auto"`` (needs ``cost``).
        cost: the calibrated step cost (``budget="auto"``).
        max_budget: most draft nodes ``"auto"`` considers (>= 1).
        max_depth: deepest draft node (>= 1).
        max_match: longest context suffix matched (>= 1).
        children: most children per node (>= 1).
        index_depth: longest substring this request's index stores (match + continuation).
        calibration: the acceptance calibration to start from (owned by this drafter; default
            fresh, i.e. the prior).
        remember: called with the calibration when the request ends (hand it to the next).
        seed_prefill: seed recycler rows from the prompt's prefill top-k.
        cache_output: add this request's output to ``cache`` when it ends.
        max_output, eos_token_ids: the request's token budget and stop tokens: the output
            cached is what the request emitted (the last step may verify tokens past them).
        finish: called when the request ends, after the output is cached (e.g. to persist the
            recycler and the cache).
        chain: propose one chain, the best path (:func:`top_path`) of the tree grown with
            ``budget`` nodes (serving stacks that verify chains, e.g. vLLM).
        token_cost: with ``chain``, the expected accepted tokens a draft token must be worth
            (:func:`top_path`; 0: the chain of the most expected accepted tokens).

    Raises:
        ValueError: a size below 1, ``budget`` neither an int nor ``"auto"``, ``"auto"``
            without ``cost``, a calibration for another recycler ``k``.
        TypeError: ``recycler`` / ``cache`` of the wrong type.
    """

    def __init__(
        self,
        *,
        recycler: Any = None,
        cache: Optional[SuffixCache] = None,
        budget: Union[int, str] = DEFAULT_BUDGET,
        cost: Optional[StepCost] = None,
        max_budget: int = DEFAULT_MAX_BUDGET,
        max_depth: int = DEFAULT_TREE_DEPTH,
        max_match: int = DEFAULT_MAX_MATCH,
        children: int = DEFAULT_CHILDREN,
        index_depth: int = DEFAULT_MAX_DEPTH,
        calibration: Optional[Calibration] = None,
        remember: Optional[Callable[[Calibration], None]] = None,
        seed_prefill: bool = True,
        cache_output: bool = True,
        max_output: Optional[int] = None,
        eos_token_ids: Sequence[int] = (),
        finish: Optional[Callable[[], None]] = None,
        chain: bool = False,
        token_cost: float = 0.0,
    ):
        from tokenloom.spec.recycling.recycler import TokenRecycler

        if recycler is not None and not isinstance(recycler, TokenRecycler):
            raise TypeError(f"recycler: expected a tokenloom.TokenRecycler or None, got {type(recycler).__name__}")
        if cache is not None and not isinstance(cache, SuffixCache):
            raise TypeError(f"cache: expected a SuffixCache or None, got {type(cache).__name__}")
        self.auto = isinstance(budget, str) and budget == "auto"
        if self.auto:
            if cost is None:
                raise ValueError('budget="auto" needs the calibrated step cost (cost=calibrate_step_cost(model))')
            self.budget = as_count(max_budget, "max_budget", 1)
        elif isinstance(budget, str):
            raise ValueError(f'budget: expected an int >= 1 or "auto", got {budget!r}')
        else:
            self.budget = as_count(budget, "budget", 1)
        self.max_depth = as_count(max_depth, "max_depth", 1)
        self.max_match = as_count(max_match, "max_match", 1)
        self.children = as_count(children, "children", 1)
        self.index_depth = as_count(index_depth, "index_depth", 2)
        self.recycler = recycler
        self.cache = cache
        self.cost = cost
        self.k = recycler.k if recycler is not None else 0
        self.calibration = calibration if calibration is not None else Calibration(k=self.k)
        if self.calibration.k != self.k:
            raise ValueError(f"calibration: made for k={self.calibration.k}, the recycler has k={self.k}")
        self._remember = remember
        self.seed_prefill = bool(seed_prefill) and recycler is not None
        self.cache_output = bool(cache_output)
        self.max_output = None if max_output is None else as_count(max_output, "max_output", 0)
        self.eos = frozenset(int(t) for t in eos_token_ids)
        self._on_finish = finish
        self.chain = bool(chain)
        if isinstance(token_cost, bool) or not isinstance(token_cost, (int, float)) or not 0.0 <= token_cost <= 1.0:
            raise ValueError(f"token_cost: expected a number in [0, 1], got {token_cost!r}")
        self.token_cost = float(token_cost)
        self.name = "merged" if recycler is not None else "suffix"
        self.prefill_positions = SEED_MAX_POSITIONS if self.seed_prefill else 1
        self._upper = np.triu(np.ones((self.k, self.k), dtype=bool), 1)  # [i, j]: i < j
        self._builder = _core.DynamicTreeBuilder(self.budget, self.max_depth, k=self.children)
        self.index = SuffixIndex(self.index_depth)
        self.seq: List[int] = []
        self._n_prompt = 0
        self._rows: Dict[int, Tuple[List[int], List[List[int]]]] = {}
        self._tree_bids: np.ndarray = np.zeros(1, dtype=np.int64)
        self._counts = {"steps": 0, "request_matched": 0, "cache_matched": 0, "nodes": 0}
        self._finished = False

    # -- the Drafter protocol --------------------------------------------------------------
    def prefill(self, input_ids: Any, first_token: int, cache: Any, logits: Any) -> None:
        """Index the prompt and the first token; seed recycler rows from the prefill top-k."""
        self.begin([int(t) for t in input_ids[0].tolist()] + [int(first_token)], int(input_ids.shape[1]))
        if self.seed_prefill:
            m = int(logits.shape[0])
            topk = top_k_ids(logits, self.k)
            self.recycler.seed_from_prefill(input_ids[0, -m:].cpu(), topk)

    def begin(self, tokens: Sequence[int], n_prompt: int) -> None:
        """Start the request from its tokens so far (``tokens`` int [n]: the prompt, its first
        ``n_prompt`` tokens, then any output), indexed for suffix matches."""
        self.seq = [int(t) for t in tokens]
        self._n_prompt = int(n_prompt)
        self.index = SuffixIndex(self.index_depth)
        self.index.extend(np.asarray(self.seq, dtype=np.int64))

    @property
    def n_prompt(self) -> int:
        """Tokens of the prompt (the output, cached at the end, follows them)."""
        return self._n_prompt

    def propose(self, root: int, past_len: int) -> DraftTree:
        """The merged tree below ``root`` (a root-only tree when nothing pays)."""
        if not self.seq or self.seq[-1] != int(root):
            raise ValueError(f"propose: root {root} is not the newest token of the indexed sequence")
        self._counts["steps"] += 1
        kids, cls = self._suffix_trie()
        tokens, parents, depths, scores, bids = self._grow(int(root), kids, cls)
        if self.chain and tokens.shape[0] > 1:
            keep = top_path(scores, parents, self.token_cost)
            tree = subtree(keep, tokens, parents, depths)
            bids = bids[keep]
        elif self.auto and tokens.shape[0] > 1:
            keep = best_nodes(scores, depths, self.cost)  # type: ignore[arg-type]
            tree = subtree(keep, tokens, parents, depths)
            bids = bids[keep]
        else:
            tree = DraftTree(tokens, parents, depths)
        self._tree_bids = bids
        self._counts["nodes"] += tree.size - 1
        return tree

    def accept(self, tree: DraftTree, result: Any, logits: Any) -> None:
        """Learn the calibration at the accepted nodes; index the emitted tokens; update the
        recycler rows of every tree position with the target's top-k."""
        self.learn(result.path.tolist(), result.tokens)
        if self.recycler is not None:
            topk = top_k_ids(logits, self.k)
            self.recycler.update(tree.tokens, topk)

    def learn(self, path: Sequence[int], emitted: Any) -> None:
        """The verification of the last proposed tree: ``path`` int [a + 1] its accepted nodes
        (root first), ``emitted`` int [a + 1] the tokens they emitted (the accepted drafts, then
        the target's own). Learns the calibration at every accepted node, indexes the tokens
        (the recycler is updated by the caller)."""
        emitted = [int(t) for t in emitted]
        offered: List[List[int]] = []
        hits: List[List[bool]] = []
        for j, node in enumerate(path):
            info = self._rows.get(int(self._tree_bids[node]))
            if info is None:
                continue
            toks, classes = info
            nxt = emitted[j]
            flat_c: List[int] = []
            flat_h: List[bool] = []
            for t, cl in zip(toks, classes):
                flat_c.extend(cl)
                flat_h.extend([t == nxt] * len(cl))
            offered.append(flat_c)
            hits.append(flat_h)
        self.calibration.observe(offered, hits)
        self.seq.extend(emitted)
        self.index.extend(np.asarray(emitted, dtype=np.int64))

    def finish(self) -> None:
        """The request ended: its output joins the cross-request cache; the calibration is
        handed on (``remember``). Idempotent."""
        if self._finished:
            return
        self._finished = True
        out = self.seq[self._n_prompt:][: self.max_output]
        for i, t in enumerate(out):
            if t in self.eos:
                out = out[: i + 1]
                break
        if self.cache is not None and self.cache_output and out:
            self.cache.insert(np.asarray(out, dtype=np.int64))
        if self._remember is not None:
            self._remember(self.calibration)
        if self._on_finish is not None:
            self._on_finish()

    def stats(self) -> Dict[str, Any]:
        req, cache, rec = self.calibration.summary()
        out: Dict[str, Any] = {f"{self.name}_{k}": v for k, v in self._counts.items()}
        out[f"{self.name}_hit_rates"] = {"request": req, "cache": cache, "recycled": rec}
        if self.cache is not None:
            out[f"{self.name}_cache"] = {"requests": len(self.cache), "tokens": self.cache.num_tokens, "bytes": self.cache.memory_bytes}
        return out

    # -- one step ----------------------------------------------------------------------------
    def _suffix_trie(self) -> Tuple[List[Dict[int, int]], List[Dict[int, List[int]]]]:
        """The trie union of this step's suffix continuations: ``kids[n]`` token -> child and
        ``cls[n]`` token -> calibration classes of that child (one per source offering it)."""
        kids: List[Dict[int, int]] = [{}]
        cls: List[Dict[int, List[int]]] = [{}]
        ctx = np.asarray(self.seq[-self.max_match:], dtype=np.int64)
        sources = [(0, self.index)] + ([(1, self.cache)] if self.cache is not None else [])
        cal = self.calibration
        for src, store in sources:
            toks, pars, probs, support, m = store.speculate(ctx, self.max_match, self.budget)
            if not m:
                continue
            self._counts["request_matched" if src == 0 else "cache_matched"] += 1
            local: List[int] = []
            depth: List[int] = []
            for i, (t, p) in enumerate(zip(toks.tolist(), pars.tolist())):
                mp = 0 if p < 0 else local[p]
                d = 1 if p < 0 else depth[p] + 1
                child = kids[mp].get(t)
                if child is None:
                    child = kids[mp][t] = len(kids)
                    kids.append({})
                    cls.append({})
                cls[mp].setdefault(t, []).append(cal.suffix_class(src, m + d - 1, float(probs[i]), int(support[i])))
                local.append(child)
                depth.append(d)
        return kids, cls

    def _grow(self, root: int, kids: List[Dict[int, int]], cls: List[Dict[int, List[int]]]) -> Tuple[np.ndarray, ...]:
        """Grow the tree with the builder, one frontier (one depth) per round."""
        b = self._builder
        b.reset(root)
        cal = self.calibration
        est = cal.estimates()
        rec = self.recycler
        sid: Dict[int, int] = {0: 0}
        self._rows = {}
        while not b.done:
            ids, toks, pars, deps = b.frontier()
            tid, tp, classes = self._recycled_rows(toks, deps, est) if rec is not None else (None, None, None)
            bids = ids.tolist()
            suffix_rows: Dict[int, Tuple[List[int], List[float], List[List[int]]]] = {}
            for r, bid in enumerate(bids):
                s = sid.get(bid)
                if s is None:
                    ps = sid.get(int(pars[r]), -1)
                    s = kids[ps].get(int(toks[r]), -1) if ps >= 0 else -1
                    sid[bid] = s
                if s >= 0 and cls[s]:
                    suffix_rows[r] = self._merge_row(cls[s], tid, classes, r, est)
                elif tid is not None:
                    keep = tp[r] > 0.0
                    self._rows[bid] = (tid[r][keep].tolist(), [[c] for c in classes[r][keep].tolist()])
            if suffix_rows:
                width = max([len(t) for t, _, _ in suffix_rows.values()] + [0 if tid is None else tid.shape[1]])
                n = len(bids)
                new_ids = np.zeros((n, width), dtype=np.int64)
                new_p = np.zeros((n, width), dtype=np.float64)
                if tid is not None:
                    new_ids[:, : tid.shape[1]] = tid
                    new_p[:, : tid.shape[1]] = tp
                for r, (tl, pl, cl) in suffix_rows.items():
                    new_ids[r] = 0
                    new_p[r] = 0.0
                    new_ids[r, : len(tl)] = tl
                    new_p[r, : len(pl)] = pl
                    self._rows[bids[r]] = (tl, cl)
                tid, tp = new_ids, cap_rows(new_p)  # the merged rows (recycled-only rows are capped already)
            elif tid is None:
                tid = np.zeros((len(bids), 1), dtype=np.int64)
                tp = np.zeros((len(bids), 1), dtype=np.float64)
            b.expand(ids, tid, tp)
        tokens, parents, depths, scores, _rows, node_ids = b.tree()
        return tokens, parents, depths, scores, node_ids

    def _recycled_rows(self, toks: np.ndarray, deps: np.ndarray, est: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The recycled candidates of the frontier tokens: ids int64 [F, k], calibrated
        probabilities [F, k] (0 for a repeated token and for rows never written) and classes."""
        rows = self.recycler.rows(toks).astype(np.int64)
        cal = self.calibration
        ranks = np.arange(self.k)
        classes = cal.n_suffix + ranks[None, :] * RECYCLE_DEPTHS + np.minimum(deps, RECYCLE_DEPTHS - 1)[:, None]
        probs = est[classes]
        # a token's first rank only; an all-zero row was never written
        dup = ((rows[:, :, None] == rows[:, None, :]) & self._upper).any(axis=1)
        probs[dup] = 0.0
        probs[~rows.any(axis=1)] = 0.0
        return rows, cap_rows(probs), classes

    @staticmethod
    def _merge_row(
        suffix: Dict[int, List[int]], tid: Optional[np.ndarray], classes: Optional[np.ndarray], r: int, est: np.ndarray
    ) -> Tuple[List[int], List[float], List[List[int]]]:
        """One row offering suffix candidates (and the recycled ones of row ``r``): tokens,
        probabilities (``1 - prod(1 - p)`` over the sources; the caller caps the row with
        :func:`cap_rows`), classes."""
        cand: Dict[int, List[int]] = {t: list(c) for t, c in suffix.items()}
        if tid is not None and classes is not None and tid[r].any():
            first = int(classes[r, 0])  # recycled classes of this row are >= it, suffix ones below
            for t, c in zip(tid[r].tolist(), classes[r].tolist()):
                lst = cand.setdefault(t, [])
                if not lst or lst[-1] < first:  # a token's first rank only
                    lst.append(c)
        tl = list(cand)
        pl = []
        for t in tl:
            miss = 1.0
            for c in cand[t]:
                miss *= 1.0 - est[c]
            pl.append(1.0 - miss)
        return tl, pl, [cand[t] for t in tl]
