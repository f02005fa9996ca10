"""``generate(method="dyspec")``: speculative decoding with DySpec draft trees (arXiv 2410.11744).

Each step: grow a draft tree below the last emitted token with the Rust
:class:`~tokenloom.dyspec.DynamicTreeBuilder` (one batched draft forward per depth), run ONE
target forward over the tree (:mod:`tokenloom.treeattn`), verify, compact the target's KV cache
to the accepted path, tell the draft which tokens were emitted (it keeps the cache entries of
the accepted path) and emit the accepted tokens plus the bonus token.

Verification: at temperature 0 greedy argmax matching (the output equals the target's greedy
output); otherwise the builder samples children without replacement from the draft rows
(``sampled=True``) and :func:`tokenloom.verify_tree` checks them losslessly with the draft
probabilities (``draft_probs=q``, ``replacement=False``).

``tree="fixed"`` and ``tree="chain"`` run the very same loop and draft with a static shape (the
first ``budget`` paths of Token Recycling's nested "2.2.2" order cut at ``max_depth``, or a chain
of ``max_depth`` top-1 tokens), so the three can be compared on equal terms.
"""

from __future__ import annotations

import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from tokenloom.runtime.model import logits_width

from tokenloom.spec.dyspec.builder import DynamicTree, DynamicTreeBuilder, Frontier
from tokenloom.decoding.generate import DecodeConfig, TokenSink, register_method

__all__ = [
    "DEFAULT_BUDGET",
    "DEFAULT_K",
    "DEFAULT_MAX_DEPTH",
    "StaticTreeBuilder",
    "decode_dyspec",
    "default_draft_layers",
    "fixed_tree_paths",
    "make_draft",
]

#: Default draft nodes per tree (root excluded).
DEFAULT_BUDGET = 16
#: Default deepest tree depth (= most draft forwards per step).
DEFAULT_MAX_DEPTH = 5
#: Default children per node considered by the builder (top-k of each draft row).
DEFAULT_K = 8
#: Default fraction of the target's layers used by the early-exit draft. Chosen by MAT from the
#: sweep in docs/dyspec.md (benches/dyspec_sweep.py on 13 Spec-Bench questions, SmolLM2-135M,
#: 30 layers): 12 layers MAT 1.17-1.25, 18 layers 1.13-1.31, 24 layers 1.45-1.79. An untrained
#: early exit needs most of the layers to predict anything; it is a no-second-model fallback, not
#: a fast draft (pass ``draft_model=`` for speed).
DEFAULT_DRAFT_FRACTION = 0.8
#: Default draft temperature for greedy decoding: the untrained early exit is overconfident, and
#: flattening its rows makes DySpec's cumulative-probability expansion spend the budget better
#: (dynamic-tree MAT 1.664 at T=1, 1.788 at T=2, 1.741 at T=4 in the same sweep; a fixed tree of
#: the same budget: 1.772). Greedy output does not depend on it.
DEFAULT_GREEDY_DRAFT_TEMPERATURE = 2.0
TREES = ("dynamic", "fixed", "chain")


def default_draft_layers(model: Any) -> int:
    """Layers of the default early-exit draft: :data:`DEFAULT_DRAFT_FRACTION` of the target's
    (at least 1)."""
    n = int(getattr(model.config, "num_hidden_layers", 0) or 0)
    if n < 1:
        raise ValueError("draft_layers: cannot read num_hidden_layers from the model config; give draft_layers")
    return max(1, int(round(n * DEFAULT_DRAFT_FRACTION)))



def make_draft(
    model: Any,
    *,
    draft_model: Any = None,
    draft_layers: Optional[int] = None,
    k: int = DEFAULT_K,
    temperature: float = 1.0,
) -> Any:
    """The draft for ``model``: ``draft_model`` (an HF causal LM sharing the tokenizer ->
    :class:`~tokenloom.drafts.HFDraft`, or a ready :class:`~tokenloom.drafts.TreeDraft`, whose
    ``k`` / ``temperature`` are then set), else the target's first ``draft_layers`` layers
    (:class:`~tokenloom.drafts.EarlyExitDraft`, default :func:`default_draft_layers`).

    Raises:
        ValueError: both given, a draft vocabulary that differs from the target's, bad sizes.
    """
    from tokenloom.spec.dyspec.drafts import EarlyExitDraft, HFDraft, TreeDraft, check_vocab

    if draft_model is not None and draft_layers is not None:
        raise ValueError("give either draft_model or draft_layers, not both")
    if isinstance(draft_model, TreeDraft):
        if isinstance(draft_model, HFDraft):
            check_vocab(draft_model.model, model)
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k: expected an int >= 1, got {k!r}")
        draft_model.k = k
        draft_model.temperature = float(temperature)
        return draft_model
    if draft_model is not None:
        return HFDraft(draft_model, target=model, k=k, temperature=temperature)
    n = default_draft_layers(model) if draft_layers is None else draft_layers
    return EarlyExitDraft(model, n, k=k, temperature=temperature)


def fixed_tree_paths(budget: int, max_depth: int, k: int) -> List[List[int]]:
    """The static comparison tree: the first ``budget`` rank paths of Token Recycling's nested
    "2.2.2" order with depth <= ``max_depth`` and ranks < ``k`` (subtree-closed, ordered by a
    prior acceptance estimate). Fewer when the template runs out."""
    from tokenloom.spec.recycling.recycler import nested_template_order

    paths = [p for p in nested_template_order() if len(p) <= max_depth and max(p) < k]
    return paths[:budget]


def chain_paths(max_depth: int) -> List[List[int]]:
    """A chain of ``max_depth`` top-1 (first-drawn) tokens."""
    return [[0] * d for d in range(1, max_depth + 1)]


class StaticTreeBuilder:
    """A fixed tree shape filled from a draft, with :class:`~tokenloom.dyspec.DynamicTreeBuilder`'s
    protocol (``reset``, ``done``, ``frontier``, ``expand``, ``tree``), so one loop drives both.

    Node ``(r1, ..., rm)`` is the ``rm``-th child of node ``(r1, ..., r(m-1))``: its top-``rm``
    draft token (``sampled=False``) or its ``rm``-th draw without replacement from the draft
    row renormalised over its entries (``sampled=True``, Gumbel-top-k, as the dynamic builder).
    Every node with children in the shape is forwarded, one depth per forward.

    Args:
        paths: rank paths, subtree-closed; with ``sampled=True`` the ranks of siblings must be
            ``0..c-1`` (children are the first ``c`` draws).
        sampled: draw children instead of taking the top-k.
        seed: seed of the draws (None: fresh entropy).

    Raises:
        ValueError: an empty, duplicate, negative or not subtree-closed path set.
    """

    def __init__(self, paths: Sequence[Sequence[int]], *, sampled: bool = False, seed: Optional[int] = None):
        ps = sorted({tuple(int(r) for r in p) for p in paths}, key=lambda p: (len(p), p))
        if not ps or len(ps) != len(paths) or any(len(p) == 0 or min(p) < 0 for p in ps):
            raise ValueError(f"paths: expected distinct non-empty rank paths with ranks >= 0, got {paths!r}")
        have = set(ps)
        self._children: Dict[Tuple[int, ...], List[int]] = {}
        for p in ps:
            if len(p) > 1 and p[:-1] not in have:
                raise ValueError(f"paths: not subtree-closed, {list(p)} without its parent {list(p[:-1])}")
            self._children.setdefault(p[:-1], []).append(p[-1])
        if sampled:
            for pre, ranks in self._children.items():
                if sorted(ranks) != list(range(len(ranks))):
                    raise ValueError(f"paths: sampled children of {list(pre)} must have ranks 0..c-1, got {ranks}")
        self.sampled = bool(sampled)
        self.budget = len(ps)
        self.max_depth = max(len(p) for p in ps)
        self.k = max(max(p) for p in ps) + 1
        self._rng = np.random.default_rng(seed)
        self.reset(0)

    def reset(self, root_token: int) -> None:
        self._tok: List[int] = [int(root_token)]
        self._par: List[int] = [-1]
        self._dep: List[int] = [0]
        self._path: List[Tuple[int, ...]] = [()]
        self._row: List[int] = [-1]
        self._score: List[float] = [1.0]
        self._rows = 0
        self._front: List[int] = [0]

    @property
    def done(self) -> bool:
        return not self._front

    @property
    def rows_seen(self) -> int:
        return self._rows

    def frontier(self) -> Frontier:
        f = self._front
        return Frontier(
            np.array(f, dtype=np.int64),
            np.array([self._tok[i] for i in f], dtype=np.int64),
            np.array([self._par[i] for i in f], dtype=np.int64),
            np.array([self._dep[i] for i in f], dtype=np.int64),
        )

    def expand(self, node_ids: Any, topk_ids: Any, topk_probs: Any) -> None:
        """Children of every frontier node from its top-k row (the frontier order)."""
        from tokenloom._arrays import as_array

        nodes = as_array(node_ids, np.int64, "node_ids", 1)
        ids = as_array(topk_ids, np.int64, "topk_ids", 2)
        probs = as_array(topk_probs, np.float64, "topk_probs", 2)
        if nodes.tolist() != self._front:
            raise ValueError(f"node_ids: expected the frontier {self._front}, got {nodes.tolist()}")
        if ids.shape != probs.shape or ids.shape[0] != nodes.shape[0]:
            raise ValueError(f"topk_ids / topk_probs: expected shapes [{nodes.shape[0]}, w], got {ids.shape} and {probs.shape}")
        if not np.all(np.isfinite(probs)) or probs.min(initial=0.0) < 0 or probs.max(initial=0.0) > 1:
            raise ValueError("topk_probs: expected finite probabilities in [0, 1] (NaN or out of range)")
        new: List[int] = []
        for r, n in enumerate(self._front):
            ranks = self._children.get(self._path[n], [])
            row = probs[r]
            if self.sampled:
                pos = np.nonzero(row > 0)[0]
                gumbel = np.log(row[pos]) - np.log(-np.log(self._rng.random(pos.size)))
                order = pos[np.argsort(-gumbel, kind="stable")].tolist()
            else:
                order = list(range(row.size))
            for rank in ranks:
                if rank >= len(order):
                    continue  # the row has fewer candidates: the branch stays out
                j = order[rank]
                self._tok.append(int(ids[r, j]))
                self._par.append(n)
                self._dep.append(self._dep[n] + 1)
                self._path.append(self._path[n] + (rank,))
                self._row.append(-1)
                self._score.append(self._score[n] * float(row[j]))
                if self._path[-1] in self._children:
                    new.append(len(self._tok) - 1)
            self._row[n] = self._rows + r
        self._rows += len(self._front)
        self._front = new

    def tree(self) -> DynamicTree:
        n = len(self._tok)
        return DynamicTree(
            np.array(self._tok, dtype=np.int64),
            np.array(self._par, dtype=np.int64),
            np.array(self._dep, dtype=np.int64),
            np.array(self._score, dtype=np.float64),
            np.array(self._row, dtype=np.int64),
            np.arange(n, dtype=np.int64),
        )


def _check_int(name: str, v: Any, lo: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(f"{name}: expected an int >= {lo}, got {v!r}")
    return int(v)


@register_method("dyspec")
def decode_dyspec(
    model: Any,
    input_ids: Any,
    cfg: DecodeConfig,
    sink: TokenSink,
    *,
    draft_model: Any = None,
    draft_layers: Optional[int] = None,
    budget: int = DEFAULT_BUDGET,
    max_depth: int = DEFAULT_MAX_DEPTH,
    k: int = DEFAULT_K,
    tree: str = "dynamic",
    max_frontier: Optional[int] = None,
    draft_temperature: Optional[float] = None,
) -> None:
    """DySpec speculative decoding.

    Args (keyword, through ``tokenloom.generate``):
        draft_model: an HF causal LM sharing the target's tokenizer (or a ready
            :class:`~tokenloom.drafts.TreeDraft`); None: the target's own first layers.
        draft_layers: layers of the early-exit draft (default :func:`default_draft_layers`).
        budget: draft nodes per tree, root excluded (a verify forward holds <= budget + 1).
        max_depth: deepest node (= most draft forwards per step).
        k: children per node considered (top-k of each draft row).
        tree: ``"dynamic"`` (DySpec), ``"fixed"`` (:func:`fixed_tree_paths`, same budget) or
            ``"chain"`` (``max_depth`` top-1 tokens); the same loop and draft for all three.
        max_frontier: most nodes per draft forward (dynamic trees; None = exact greedy).
        draft_temperature: temperature of the draft rows (default
            :data:`DEFAULT_GREEDY_DRAFT_TEMPERATURE` for greedy decoding, the
            request's temperature when sampling).

    Stats in ``sink.extra``: ``tree_sizes`` / ``accepted_hist`` / ``draft_forwards`` (steps per
    draft-node count, per accepted draft count, per draft forwards), ``builder_seconds``,
    ``draft_seconds``, ``verify_seconds`` (totals), ``draft_forward_seconds`` (mean per draft
    forward), ``builder_per_draft_forward`` (builder time per step / one draft forward),
    ``draft`` (a description).

    Raises:
        ValueError: bad sizes or ``tree``, a draft vocabulary different from the target's,
            NaN / invalid draft probabilities.
    """
    import torch
    from transformers import DynamicCache

    from tokenloom.spec.dyspec.drafts import EarlyExitDraft
    from tokenloom.spec.dyspec.builder import draft_probs_dense
    from tokenloom.runtime.kvcache import compact_cache
    from tokenloom.runtime.treeattn import tree_forward
    from tokenloom.verify.kernels import verify_greedy, verify_tree

    budget = _check_int("budget", budget)
    max_depth = _check_int("max_depth", max_depth)
    k = _check_int("k", k)
    if tree not in TREES:
        raise ValueError(f"tree: expected one of {TREES}, got {tree!r}")
    vocab = logits_width(model)
    sampled = not cfg.greedy
    temp = draft_temperature if draft_temperature is not None else (cfg.temperature if sampled else DEFAULT_GREEDY_DRAFT_TEMPERATURE)
    draft = make_draft(model, draft_model=draft_model, draft_layers=draft_layers, k=k, temperature=temp)
    rng = np.random.default_rng(cfg.seed)

    def seed() -> int:
        return int(rng.integers(0, 2**63 - 1))

    builder: Any
    if tree == "dynamic":
        builder = DynamicTreeBuilder(budget, max_depth, k=k, sampled=sampled, seed=seed(), vocab_size=vocab,
                                     max_frontier=max_frontier)
    else:
        paths = fixed_tree_paths(budget, max_depth, k) if tree == "fixed" else chain_paths(max_depth)
        builder = StaticTreeBuilder(paths, sampled=sampled, seed=seed())
    early = isinstance(draft, EarlyExitDraft)

    def target_step(parents: np.ndarray, tokens: np.ndarray, logits: Any, q: Any) -> Any:
        if not sampled:
            return verify_greedy(parents, tokens, logits.argmax(-1).cpu().numpy())
        from tokenloom.sampling.sampler import probs_from_logits

        p = probs_from_logits(logits, cfg.temperature, cfg.top_k, cfg.top_p, cfg.min_p)
        return verify_tree(parents, tokens, p.cpu(), q, seed=seed(), replacement=False)

    # Prefill: the target on the prompt, the first token, then the draft.
    cache = DynamicCache()
    n_prompt = int(input_ids.shape[1])
    out = model(input_ids=input_ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    last = out.logits[0, -1:].float()
    first = int(target_step(np.array([-1], dtype=np.int64), input_ids[0, -1:].cpu().numpy(), last, None).tokens[-1])
    extra: Dict[str, Any] = {"draft": _describe(draft), "tree": tree}
    sink.extra = extra  # type: ignore[attr-defined]
    if sink.emit([first]):
        return
    seq = torch.cat([input_ids[0].cpu(), torch.tensor([first])])
    if early:
        draft.prefill(seq, target_cache=cache)
    else:
        draft.prefill(seq)
    past, root = n_prompt, first
    tree_sizes: Dict[int, int] = {}
    accepted_hist: Dict[int, int] = {}
    forwards_hist: Dict[int, int] = {}
    t_builder = t_draft = t_verify = 0.0
    n_forwards = 0
    while True:
        # Draft: one batched forward per depth.
        t0 = time.perf_counter()
        builder.reset(root)
        rows: List[Tuple[Any, Any]] = []
        t_builder += time.perf_counter() - t0
        fw = 0
        while not builder.done:
            t0 = time.perf_counter()
            f = builder.frontier()
            t1 = time.perf_counter()
            ids, probs = draft.expand(f)
            t2 = time.perf_counter()
            builder.expand(f.ids, ids, probs)
            t_builder += (t1 - t0) + (time.perf_counter() - t2)
            t_draft += t2 - t1
            fw += 1
            if sampled:
                rows.append((ids, probs))
        t0 = time.perf_counter()
        dt = builder.tree()
        t_builder += time.perf_counter() - t0
        # Verify: one target forward over the tree.
        t0 = time.perf_counter()
        q = draft_probs_dense(dt, rows, vocab) if sampled else None
        logits = tree_forward(model, cache, torch.from_numpy(dt.tokens), dt.parents, dt.depths, past_len=past)
        res = target_step(dt.parents, dt.tokens, logits, q)
        path = np.asarray(res.path, dtype=np.int64)
        compact_cache(cache, past, path.tolist())
        past += len(path)
        t_verify += time.perf_counter() - t0
        n_forwards += fw
        n_nodes = dt.size - 1
        tree_sizes[n_nodes] = tree_sizes.get(n_nodes, 0) + 1
        accepted_hist[len(path) - 1] = accepted_hist.get(len(path) - 1, 0) + 1
        forwards_hist[fw] = forwards_hist.get(fw, 0) + 1
        emitted = [int(t) for t in np.asarray(res.tokens).reshape(-1)]
        if sink.emit(emitted):
            break
        draft.commit(emitted)
        if early:
            draft.adopt_cache(cache)
        root = emitted[-1]
    steps = sum(tree_sizes.values())
    extra.update(
        tree_sizes=dict(sorted(tree_sizes.items())),
        accepted_hist=dict(sorted(accepted_hist.items())),
        draft_forwards=dict(sorted(forwards_hist.items())),
        builder_seconds=t_builder,
        draft_seconds=t_draft,
        verify_seconds=t_verify,
        draft_forward_seconds=t_draft / n_forwards if n_forwards else 0.0,
        builder_per_draft_forward=(t_builder / steps) / (t_draft / n_forwards) if n_forwards and t_draft > 0 else 0.0,
    )


def _describe(draft: Any) -> str:
    from tokenloom.spec.dyspec.drafts import EarlyExitDraft

    if isinstance(draft, EarlyExitDraft):
        return f"early-exit {draft.n_layers} layers"
    model = getattr(draft, "model", None)
    return f"{type(draft).__name__}({type(model).__name__ if model is not None else ''})"
