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
   target's next token (:class:`~tokenloom.spec.merged.calibration.Calibration`; a candidate
   offered by both gets ``1 - (1 - p_s)(1 - p_r)``; a row summing above 1 keeps its
   largest estimate and scales the others into the rest, :func:`cap_rows`). A
   node's score is the product of these along its path, its estimated acceptance probability;
   the builder keeps the ``budget`` best (a subtree-closed set). A long suffix match so
   becomes a deep chain, a miss falls back to recycled candidates, and both can share a tree;
3. with ``budget="auto"`` the builder grows up to ``max_budget`` nodes and the tree is cut to
   the N best maximising ``(1 + sum of the N best scores) / cost(N + 1)`` with this machine's
   calibrated step cost (:func:`tokenloom.spec.sizing.calibrate_step_cost`); N = 0 is a plain
   step.

Steps 1-3 (and chain mode's cut, :func:`top_path`) run in the Rust core in one call per step
(``_core.grow_merged``; its pure-Python form is the parity reference of the tests).

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
from tokenloom._arrays import as_array, as_count, as_fraction
from tokenloom.spec.base import DraftTree
from tokenloom.spec.sizing import StepCost
from tokenloom.spec.merged.calibration import CANDIDATE_CLASSES, Calibration
from tokenloom.spec.recycling.drafter import SEED_FROM_PREFILL, SEED_MAX_POSITIONS
from tokenloom.spec.suffix.store import DEFAULT_MAX_DEPTH, MAX_MATCH, SuffixCache, SuffixIndex
from tokenloom.sampling.topk import top_k_ids

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


def best_nodes(scores: np.ndarray, depths: np.ndarray, cost: StepCost) -> np.ndarray:
    """The nodes to keep of a scored tree (node 0 the root, BFS order, a child never scored
    above its parent): the root and the N best draft nodes, N maximising
    ``(1 + sum of their scores) / cost(N + 1)``.

    The draft nodes are taken by score (ties: the shallower, then the lower index) and N is the
    first maximum; the Rust core computes it (``_core.best_nodes``, in numpy's arithmetic).

    Returns:
        int64 [N + 1], increasing (so parents stay before children).
    """
    tokens, seconds = cost_curve(cost)
    return _core.best_nodes(as_array(scores, np.float64, "scores", 1), as_array(depths, np.int64, "depths", 1), tokens, seconds)


def cost_curve(cost: StepCost) -> Tuple[np.ndarray, np.ndarray]:
    """float64 [m] token counts and seconds of a step-cost curve (the core's arguments)."""
    return np.asarray(cost.tokens, dtype=np.float64), np.asarray(cost.seconds, dtype=np.float64)


def cap_rows(probs: np.ndarray) -> np.ndarray:
    """Make each row a sub-distribution while keeping its most confident estimates.

    The candidates of a row are exclusive events (at most one is the target's next token), but
    their calibrated estimates come from separate classes and can sum above 1. Scaling the whole
    row down would also shrink a near-certain candidate (a long suffix match at 0.95 offered
    beside recycled candidates would drop to ~0.6); instead, in a row summing above 1, the
    largest estimate is kept (``n`` candidates tied at it keep ``min(max, 1 / n)`` each) and the
    others share what is left in their proportions (scaled down only when they sum above it).
    A row summing to at most 1 is unchanged. The result does not depend on the order of a row.

    Computed in the Rust core (``_core.cap_rows``; its numpy form is the tests' reference).

    Args:
        probs: float [rows, width] (or [width]), each in [0, 1].

    Returns:
        float64, the same shape: the capped estimates.

    Raises:
        ValueError: an entry outside [0, 1] (or NaN), not 1-D or 2-D.
    """
    p = np.ascontiguousarray(probs, dtype=np.float64)
    if p.ndim not in (1, 2):
        raise ValueError(f"probs: expected [rows, width] or [width], got shape {p.shape}")
    return _core.cap_rows(p.reshape(1, -1) if p.ndim == 1 else p).reshape(p.shape)


def top_path(scores: np.ndarray, parents: np.ndarray, token_cost: float = 0.0) -> np.ndarray:
    """The best chain of a scored tree (node 0 the root, parents before children, a node's
    score its estimated probability of being reached and accepted): the root-to-node path with
    the largest sum of ``score - token_cost`` over its draft nodes, i.e. the most expected
    accepted tokens of one chain, less ``token_cost`` per token proposed (0: the longest gain;
    a draft token must be worth more than ``token_cost`` accepted tokens). Ties go to the
    shorter path, then the lower node index.

    Computed in the Rust core (``_core.top_path``).

    Returns:
        int64 [L + 1]: the path's nodes, root first (``[0]`` when no draft node scores above 0).
    """
    return _core.top_path(as_array(scores, np.float64, "scores", 1), as_array(parents, np.int64, "parents", 1), float(token_cost))


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
        max_match: longest context suffix matched, in [1, 256] (:data:`MAX_MATCH`).
        children: most children per node (>= 1).
        index_depth: longest substring this request's index stores (match + continuation).
        calibration: the acceptance calibration to start from (owned by this drafter; default
            fresh, i.e. the prior).
        remember: called with the calibration when the request ends (hand it to the next).
        seed_prefill: seed recycler rows from the prompt's prefill top-k (default
            :data:`~tokenloom.spec.recycling.drafter.SEED_FROM_PREFILL`, off).
        cache_output: add this request's output to ``cache`` when it ends.
        max_output, eos_token_ids: the request's token budget and stop tokens: the output
            cached is what the request emitted (the last step may verify tokens past them).
        finish: called when the request ends, after the output is cached (e.g. to persist the
            recycler and the cache).
        chain: propose one chain, the best path (:func:`top_path`) of the tree grown with
            ``budget`` nodes (serving stacks that verify chains, e.g. vLLM).
        token_cost: with ``chain``, the expected accepted tokens a draft token must be worth
            (:func:`top_path`; 0: the chain of the most expected accepted tokens).
        calibrate: learn the calibration from every verified step (False: only index the
            emitted tokens, e.g. for a subclass proposing trees of its own, whose nodes carry
            no offered candidates).

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
        seed_prefill: bool = SEED_FROM_PREFILL,
        cache_output: bool = True,
        max_output: Optional[int] = None,
        eos_token_ids: Sequence[int] = (),
        finish: Optional[Callable[[], None]] = None,
        chain: bool = False,
        token_cost: float = 0.0,
        calibrate: bool = True,
    ):
        from tokenloom.spec.recycling.recycler import TokenRecycler

        if recycler is not None and not isinstance(recycler, TokenRecycler):
            raise TypeError(f"recycler: expected a tokenloom.TokenRecycler or None, got {type(recycler).__name__}")
        if cache is not None and not isinstance(cache, SuffixCache):
            raise TypeError(f"cache: expected a SuffixCache or None, got {type(cache).__name__}")
        self.auto = isinstance(budget, str) and budget == "auto"
        max_budget = as_count(max_budget, "max_budget", 1)  # checked whatever the budget
        if self.auto:
            if cost is None:
                raise ValueError('budget="auto" needs the calibrated step cost (cost=calibrate_step_cost(model))')
            self.budget = max_budget
        elif isinstance(budget, str):
            raise ValueError(f'budget: expected an int >= 1 or "auto", got {budget!r}')
        else:
            self.budget = as_count(budget, "budget", 1)
        self.max_depth = as_count(max_depth, "max_depth", 1)
        self.max_match = as_count(max_match, "max_match", 1, MAX_MATCH)
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
        self.token_cost = as_fraction(token_cost, "token_cost")
        self.calibrate = bool(calibrate)
        self.name = "merged" if recycler is not None else "suffix"
        self.prefill_positions = SEED_MAX_POSITIONS if self.seed_prefill else 1
        self._builder = _core.DynamicTreeBuilder(self.budget, self.max_depth, k=self.children)
        # The core cuts the tree: to its best chain (chain), to its best nodes for this cost
        # curve (auto), or not at all.
        self._cut: Dict[str, Any] = {"token_cost": self.token_cost} if self.chain else {}
        if self.auto and not self.chain:
            self._cut = dict(zip(("cost_tokens", "cost_seconds"), cost_curve(cost)))  # type: ignore[arg-type]
        self.index = SuffixIndex(self.index_depth)
        self.seq: List[int] = []
        self._n_prompt = 0
        # The last proposed tree: the row of each node (-1: not expanded) into the offered
        # (token, class) pairs of every row (``_core.grow_merged``), which ``learn`` uses.
        self._tree_rows: np.ndarray = np.full(1, -1, dtype=np.int64)
        self._offered = (np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
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
        (tokens, parents, depths, _scores, rows, _ids), (_row_nodes, offsets, offered_t, offered_c), matched = _core.grow_merged(
            self._builder, int(root), np.asarray(self.seq[-self.max_match:], dtype=np.int64),
            self.calibration.estimates(), CANDIDATE_CLASSES, self.index.core,
            None if self.cache is None else self.cache.core, None if self.recycler is None else self.recycler.core,
            max_match=self.max_match, max_nodes=self.budget, **self._cut,
        )
        self._counts["request_matched"] += matched[0]
        self._counts["cache_matched"] += matched[1]
        tree = DraftTree(tokens, parents, depths)
        self._tree_rows = rows
        self._offered = (offsets, offered_t, offered_c)
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
        the target's own). Learns the calibration at every accepted node (with ``calibrate``),
        indexes the tokens (the recycler is updated by the caller)."""
        emitted = [int(t) for t in emitted]
        if self.calibrate:
            self._learn_calibration(path, emitted)
        self.seq.extend(emitted)
        self.index.extend(np.asarray(emitted, dtype=np.int64))

    def _learn_calibration(self, path: Sequence[int], emitted: List[int]) -> None:
        offsets, toks, classes = self._offered
        offered: List[np.ndarray] = []
        hits: List[np.ndarray] = []
        for j, node in enumerate(path):
            r = int(self._tree_rows[node])
            if r < 0:
                continue
            a, b = int(offsets[r]), int(offsets[r + 1])
            offered.append(classes[a:b])
            hits.append(toks[a:b] == emitted[j])
        self.calibration.observe(offered, hits)

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
