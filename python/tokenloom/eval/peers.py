"""Benchmark-only peers of the merged drafter, run in tokenloom's one loop. They are never in
``generate``'s method table: the bench's own table, :data:`BENCH_METHODS`, is visible only
inside its calls (:func:`tokenloom.decoding.methods.method_scope`):

* :class:`SamSwitchDrafter` — the SAM-Decoding rule (arXiv 2411.10666): when the longest suffix
  match (this request's tokens or the cross-request cache) is at least ``threshold`` tokens,
  draft its most likely continuation as a chain; otherwise the Token Recycling tree. The two
  sources are *switched*, never merged.
* :class:`ArcticDrafter` — arctic-inference's ``SuffixDecodingCache`` (SuffixDecoding, arXiv
  2411.04975; Apache-2.0) wrapped as a drafter: its prompt tree and its cache of earlier
  responses, ``speculate(..., use_tree_spec=True)`` giving token ids, parents and probabilities.
  It is not a tokenloom dependency: install it with ``scripts/install_arctic_suffix.sh``.

Both draft deterministic trees, so greedy output is the target's greedy output.
"""

from __future__ import annotations

import itertools
import re
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from tokenloom.decoding.methods import method_scope, speculative_method
from tokenloom.spec.base import DraftTree
from tokenloom.spec.merged.drafter import MergedDrafter
from tokenloom.spec.recycling.recycler import TokenRecycler
from tokenloom.spec.suffix.store import SuffixCache
from tokenloom.spec.templates import compile_template

__all__ = [
    "ArcticDrafter",
    "BENCH_METHODS",
    "PEER_KINDS",
    "SamSwitchDrafter",
    "arctic_available",
    "best_chain",
    "is_peer",
    "peer_method",
    "reset_peer_states",
]

#: SAM-Decoding's switch threshold: a suffix match of at least this many tokens drafts the chain.
SAM_THRESHOLD = 5


def best_chain(tokens: np.ndarray, parents: np.ndarray, probs: np.ndarray, limit: int) -> List[int]:
    """The chain that follows the most likely child from the root of a speculated suffix tree
    (``parents`` -1 for the root's children), at most ``limit`` tokens."""
    best: Dict[int, int] = {}
    for i, (p, q) in enumerate(zip(parents.tolist(), probs.tolist())):
        if p not in best or q > probs[best[p]]:
            best[p] = i
    chain, node = [], -1
    while node in best and len(chain) < limit:
        node = best[node]
        chain.append(int(tokens[node]))
    return chain


def _chain_tree(root: int, chain: List[int]) -> DraftTree:
    t = len(chain) + 1
    return DraftTree(np.array([root] + chain, dtype=np.int64), np.arange(-1, t - 1, dtype=np.int64), np.arange(t, dtype=np.int64))


class SamSwitchDrafter(MergedDrafter):
    """SAM-Decoding's switch: a suffix chain on a long match, else the recycling tree.

    Args:
        recycler: the recycler of the fallback tree. cache: the cross-request cache (or None).
        budget: draft nodes (the chain length, and the recycling template ``2.2.2-<budget>``).
        threshold: shortest match drafted as a chain.
    """

    def __init__(self, *, recycler: TokenRecycler, cache: Optional[SuffixCache], budget: int = 16, threshold: int = SAM_THRESHOLD):
        # The switched trees offer no calibrated candidates: learn indexes only.
        super().__init__(recycler=recycler, cache=cache, budget=budget, calibrate=False)
        self.name = "sam-switch"
        self.threshold = threshold
        self.template = compile_template(f"2.2.2-{budget}")
        self._chains = 0

    def propose(self, root: int, past_len: int) -> DraftTree:
        ctx = np.asarray(self.seq[-self.max_match:], dtype=np.int64)
        best = None
        for store in [self.index] + ([self.cache] if self.cache is not None else []):
            draft = store.speculate(ctx, self.max_match, 4 * self.budget)
            if draft[4] and (best is None or draft[4] > best[4]):
                best = draft
        if best is not None and best[4] >= self.threshold:
            self._chains += 1
            return _chain_tree(int(root), best_chain(best[0], best[1], best[2], self.budget))
        return self.recycler.draft(int(root), self.template)

    def stats(self) -> Dict[str, Any]:
        return {"sam_chain_steps": self._chains}


def arctic_available() -> bool:
    """Whether arctic-inference's suffix decoding can be imported."""
    try:
        from arctic_inference.suffix_decoding import SuffixDecodingCache  # noqa: F401
    except ImportError:
        return False
    return True


class ArcticDrafter:
    """arctic-inference's ``SuffixDecodingCache`` as a tokenloom drafter (one request).

    Args:
        cache: the shared ``SuffixDecodingCache`` (its earlier responses persist across requests).
        budget: most draft tokens (``max_spec_tokens``).
        max_spec_factor, min_token_prob: arctic's speculation settings (its defaults).
    """

    name = "arctic-suffix"
    prefill_positions = 1
    _ids = itertools.count()

    def __init__(self, cache: Any, budget: int = 16, max_spec_factor: float = 1.0, min_token_prob: float = 0.1):
        self.cache = cache
        self.budget = budget
        self.max_spec_factor = max_spec_factor
        self.min_token_prob = min_token_prob
        self.req = f"tokenloom-{next(self._ids)}"
        self.seq: List[int] = []
        self.max_depth = int(getattr(cache, "max_tree_depth", 64))

    def prefill(self, input_ids: Any, first_token: int, cache: Any, logits: Any) -> None:
        prompt = [int(t) for t in input_ids[0].tolist()]
        self.cache.start_request(self.req, prompt)
        self.cache.add_active_response(self.req, [int(first_token)])
        self.seq = prompt + [int(first_token)]

    def propose(self, root: int, past_len: int) -> DraftTree:
        ctx = self.seq[-self.max_depth:]
        d = self.cache.speculate(
            self.req, ctx, max_spec_tokens=self.budget, max_spec_factor=self.max_spec_factor,
            min_token_prob=self.min_token_prob, use_tree_spec=True,
        )
        toks = [int(t) for t in d.token_ids]
        if not toks:
            return DraftTree.root_only(int(root))
        parents = [-1] + [int(p) + 1 for p in d.parents]  # arctic: -1 below the root
        depths = [0] * (len(toks) + 1)
        for i in range(1, len(depths)):
            depths[i] = depths[parents[i]] + 1
        return DraftTree(np.array([int(root)] + toks, dtype=np.int64), np.array(parents, dtype=np.int64), np.array(depths, dtype=np.int64))

    def accept(self, tree: DraftTree, result: Any, logits: Any) -> None:
        toks = [int(t) for t in result.tokens]
        self.cache.add_active_response(self.req, toks)
        self.seq.extend(toks)

    def finish(self) -> None:
        self.cache.stop_request(self.req)

    def stats(self) -> Dict[str, Any]:
        return {}


def make_sam_drafter(model: Any, cfg: Any, next_seed: Callable[[], int], *, recycler: TokenRecycler, cache: Optional[SuffixCache], budget: int = 16) -> SamSwitchDrafter:
    """Factory of the bench's ``sam-<budget>`` (its own recycler and cache)."""
    return SamSwitchDrafter(recycler=recycler, cache=cache, budget=budget)


def make_arctic_drafter(model: Any, cfg: Any, next_seed: Callable[[], int], *, cache: Any, budget: int = 16) -> ArcticDrafter:
    """Factory of the bench's ``arctic-<budget>`` (its own ``SuffixDecodingCache``)."""
    return ArcticDrafter(cache, budget=budget)


#: Budgeted peers, ``<kind>-<budget>`` (``recycling`` / ``suffix`` / ``merged`` also ``-auto``):
#: each bench method owns its state (recycler, caches) for the whole run, so no method learns
#: from another's outputs.
PEER_KINDS = ("recycling", "suffix", "merged", "sam", "arctic")
_PEER = re.compile(r"^(recycling|suffix|merged|sam|arctic)-(\d+|auto)$")
#: The bench's own methods (never in the library's table): name -> method.
BENCH_METHODS = {
    "bench-sam-switch": speculative_method(make_sam_drafter),
    "bench-arctic-suffix": speculative_method(make_arctic_drafter),
}
_BENCH_NAMES = {"sam": "bench-sam-switch", "arctic": "bench-arctic-suffix"}
#: The state tables of every peer function made (cleared by :func:`reset_peer_states`).
_STATES: List[Dict[Tuple[int, int], Dict[str, Any]]] = []


def reset_peer_states() -> None:
    """Forget every peer's recycler and caches: the next request of each starts cold (the bench
    calls it before each round, so rounds are independent repeats)."""
    for table in _STATES:
        table.clear()


def _state(kind: str, vocab: int) -> Dict[str, Any]:
    if kind == "recycling":
        return {"recycler": TokenRecycler(vocab, 8)}
    if kind == "suffix":
        return {"cache": SuffixCache()}
    if kind in ("merged", "sam"):
        return {"recycler": TokenRecycler(vocab, 8), "cache": SuffixCache()}
    from arctic_inference.suffix_decoding import SuffixDecodingCache

    return {"cache": SuffixDecodingCache(max_tree_depth=64)}


def is_peer(name: str) -> bool:
    """Whether ``name`` is a budgeted peer method ``<kind>-<nodes|auto>`` (e.g. ``merged-16``)."""
    return _PEER.match(name) is not None


def peer_method(name: str) -> Any:
    """The bench function of a budgeted peer (``merged-16``, ``arctic-16``, ``recycling-auto``, ...),
    or None when ``name`` is not one.

    Raises:
        ValueError: ``arctic-*`` without arctic-inference installed; a budget ``auto`` for
            ``sam`` / ``arctic``; a recycling budget without a nested template.
    """
    m = _PEER.match(name)
    if m is None:
        return None
    kind, size = m.group(1), m.group(2)
    if kind in ("sam", "arctic") and size == "auto":
        raise ValueError(f"{name}: {kind} takes a fixed budget (e.g. {kind}-16)")
    if kind == "arctic" and not arctic_available():
        raise ValueError(f"{name}: needs arctic-inference (scripts/install_arctic_suffix.sh)")
    budget: Any = "auto" if size == "auto" else int(size)
    if kind == "recycling":
        from tokenloom.spec.templates import NESTED_SIZES

        if budget != "auto" and budget not in NESTED_SIZES:
            raise ValueError(f"{name}: recycling budgets are {list(NESTED_SIZES)} (nested 2.2.2 templates)")
        kwargs: Dict[str, Any] = {"tree": "auto" if budget == "auto" else f"2.2.2-{budget}"}
        method = "recycling"
    else:
        kwargs = {"budget": budget}
        method = kind
    method = _BENCH_NAMES.get(kind, method)
    state: Dict[Tuple[int, int], Dict[str, Any]] = {}
    _STATES.append(state)

    def fn(model: Any, ids: Any, n: int, eos: List[int]) -> Tuple[List[int], Dict[str, Any]]:
        from tokenloom.decoding.generate import generate
        from tokenloom.runtime.model import logits_width

        key = (id(model), logits_width(model))
        if key not in state:
            state[key] = _state(kind, key[1])
        with method_scope(BENCH_METHODS):
            out = generate(model, ids, method=method, max_new_tokens=n, eos_token_id=eos, **kwargs, **state[key])
        extra = {k: v for k, v in out.stats.extra.items() if k in ("tree_sizes", "accepted_hist", "draft_seconds", "verify_seconds")}
        return out.sequences[0, ids.shape[1]:].tolist(), extra

    return fn
