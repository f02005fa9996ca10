"""``generate(method="dyspec")``: DySpec draft trees (arXiv 2410.11744) as a
:class:`~tokenloom.spec.base.Drafter`.

Each step grows a draft tree below the last emitted token with the Rust
:class:`~tokenloom.spec.dyspec.builder.DynamicTreeBuilder` (one batched draft forward per depth);
the one loop (:mod:`tokenloom.spec.loop`) verifies it with one target forward; :meth:`accept`
tells the draft which tokens were emitted (it keeps the cache entries of the accepted path).

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
from typing import Any, Callable, Dict, List, Optional, Tuple

from tokenloom._arrays import as_count
from tokenloom.runtime.model import logits_width

from tokenloom.spec.base import DraftTree
from tokenloom.spec.dyspec.builder import DynamicTreeBuilder, draft_probs_dense
from tokenloom.spec.dyspec.drafts import EarlyExitDraft, HFDraft, TreeDraft, check_vocab
from tokenloom.spec.dyspec.static import StaticTreeBuilder, fixed_tree_paths
from tokenloom.spec.templates import chain_paths

__all__ = [
    "DEFAULT_BUDGET",
    "DEFAULT_K",
    "DEFAULT_MAX_DEPTH",
    "DySpecDrafter",
    "default_draft_layers",
    "make_draft",
    "make_dyspec_drafter",
]

#: Default draft nodes per tree (root excluded).
DEFAULT_BUDGET = 16
#: Default deepest tree depth (= most draft forwards per step).
DEFAULT_MAX_DEPTH = 5
#: Default children per node considered by the builder (top-k of each draft row).
DEFAULT_K = 8
#: Default fraction of the target's layers used by the early-exit draft. Chosen by MAT from the
#: sweep in docs/dyspec.md (benches/experiments/dyspec_sweep.py on 13 Spec-Bench questions, SmolLM2-135M,
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
    :class:`~tokenloom.spec.dyspec.drafts.HFDraft`, or a ready :class:`~tokenloom.spec.dyspec.drafts.TreeDraft`, whose
    ``k`` / ``temperature`` are then set), else the target's first ``draft_layers`` layers
    (:class:`~tokenloom.spec.dyspec.drafts.EarlyExitDraft`, default :func:`default_draft_layers`).

    Raises:
        ValueError: both given, a draft vocabulary that differs from the target's, bad sizes.
    """
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


def _describe(draft: Any) -> str:
    if isinstance(draft, EarlyExitDraft):
        return f"early-exit {draft.n_layers} layers"
    model = getattr(draft, "model", None)
    return f"{type(draft).__name__}({type(model).__name__ if model is not None else ''})"


class DySpecDrafter:
    """Draft trees grown from a draft model by a tree builder.

    Args:
        draft: the draft model (:class:`~tokenloom.spec.dyspec.drafts.TreeDraft`).
        builder: a :class:`~tokenloom.spec.dyspec.builder.DynamicTreeBuilder` or a
            :class:`~tokenloom.spec.dyspec.static.StaticTreeBuilder` (same protocol).
        vocab_size: V, the width of the draft rows the verifier needs for sampled trees.
        tree: the tree kind's name (statistics only).

    With ``builder.sampled`` the children are drawn without replacement from the draft rows
    and the tree carries those rows (``draft_probs`` [T, V], ``replacement=False``) for the
    lossless verifier; otherwise the tree is deterministic.
    """

    name = "dyspec"
    prefill_positions = 1

    def __init__(self, draft: TreeDraft, builder: Any, vocab_size: int, tree: str = "dynamic"):
        self.draft = draft
        self.builder = builder
        self.vocab_size = vocab_size
        self.sampled = bool(builder.sampled)
        self.tree_kind = tree
        self._early = isinstance(draft, EarlyExitDraft)
        self._cache: Any = None
        self._forwards: Dict[int, int] = {}
        self._n_forwards = 0
        self._steps = 0
        self.builder_seconds = 0.0
        self.draft_seconds = 0.0

    def prefill(self, input_ids: Any, first_token: int, cache: Any, logits: Any) -> None:
        """Start the draft on the prompt and the first token (an early exit adopts the
        target's cache instead of running its own prefill; with ``cache=None``, a row of a
        batch, it keeps its own cache)."""
        import torch

        seq = torch.cat([input_ids[0].cpu(), torch.tensor([int(first_token)])])
        self._cache = cache
        if self._early and cache is not None:
            self.draft.start(seq, target_cache=cache)
        else:
            self.draft.start(seq)

    def propose(self, root: int, past_len: int) -> DraftTree:
        """Grow a tree below ``root``: one batched draft forward per depth."""
        clock = time.perf_counter
        b = self.builder
        t0 = clock()
        b.reset(root)
        rows: List[Tuple[Any, Any]] = []
        t_build = clock() - t0
        t_draft = 0.0
        fw = 0
        while not b.done:
            t0 = clock()
            f = b.frontier()
            t1 = clock()
            ids, probs = self.draft.expand(f)
            t2 = clock()
            b.expand(f.ids, ids, probs)
            t_build += (t1 - t0) + (clock() - t2)
            t_draft += t2 - t1
            fw += 1
            if self.sampled:
                rows.append((ids, probs))
        t0 = clock()
        dt = b.tree()
        t_build += clock() - t0
        self.builder_seconds += t_build
        self.draft_seconds += t_draft
        self._n_forwards += fw
        self._forwards[fw] = self._forwards.get(fw, 0) + 1
        self._steps += 1
        if not self.sampled:
            return DraftTree(dt.tokens, dt.parents, dt.depths)
        q = draft_probs_dense(dt, rows, self.vocab_size)
        return DraftTree(dt.tokens, dt.parents, dt.depths, draft_probs=q, replacement=False)

    def accept(self, tree: DraftTree, result: Any, logits: Any) -> None:
        """Commit the emitted tokens to the draft (it keeps the accepted path's entries)."""
        self.draft.commit([int(t) for t in result.tokens])
        if self._early and self._cache is not None:
            self.draft.adopt_cache(self._cache)

    def stats(self) -> Dict[str, Any]:
        n, steps = self._n_forwards, self._steps
        per_forward = self.draft_seconds / n if n else 0.0
        return {
            "draft": _describe(self.draft),
            "tree": self.tree_kind,
            "draft_forwards": dict(sorted(self._forwards.items())),
            "builder_seconds": self.builder_seconds,
            "draft_forward_seconds": per_forward,
            "builder_per_draft_forward": (self.builder_seconds / steps) / per_forward if steps and per_forward > 0 else 0.0,
        }


def make_dyspec_drafter(
    model: Any,
    cfg: Any,
    next_seed: Callable[[], int],
    *,
    draft_model: Any = None,
    draft_layers: Optional[int] = None,
    budget: int = DEFAULT_BUDGET,
    max_depth: int = DEFAULT_MAX_DEPTH,
    k: int = DEFAULT_K,
    tree: str = "dynamic",
    max_frontier: Optional[int] = None,
    draft_temperature: Optional[float] = None,
) -> DySpecDrafter:
    """The drafter of ``generate(method="dyspec")``.

    Args (keyword, through ``tokenloom.generate``):
        draft_model: an HF causal LM sharing the target's tokenizer (or a ready
            :class:`~tokenloom.spec.dyspec.drafts.TreeDraft`); None: the target's own first layers.
        draft_layers: layers of the early-exit draft (default :func:`default_draft_layers`).
        budget: draft nodes per tree, root excluded (a verify forward holds <= budget + 1).
        max_depth: deepest node (= most draft forwards per step).
        k: children per node considered (top-k of each draft row).
        tree: ``"dynamic"`` (DySpec), ``"fixed"`` (:func:`~tokenloom.spec.dyspec.static.fixed_tree_paths`,
            same budget) or ``"chain"`` (``max_depth`` top-1 tokens); the same drafter for all three.
        max_frontier: most nodes per draft forward (dynamic trees; None = exact greedy).
        draft_temperature: temperature of the draft rows (default
            :data:`DEFAULT_GREEDY_DRAFT_TEMPERATURE` for greedy decoding, the request's
            temperature when sampling).

    Stats (``GenerateStats.extra``): ``draft_forwards`` (steps per draft forwards),
    ``builder_seconds``, ``draft_forward_seconds`` (mean per draft forward),
    ``builder_per_draft_forward`` (builder time per step / one draft forward), ``draft``, ``tree``.

    Raises:
        ValueError: bad sizes or ``tree``, a draft vocabulary different from the target's.
    """
    budget = as_count(budget, "budget", 1)
    max_depth = as_count(max_depth, "max_depth", 1)
    k = as_count(k, "k", 1)
    # Checked whatever the tree (only dynamic trees use it).
    max_frontier = None if max_frontier is None else as_count(max_frontier, "max_frontier", 1)
    if tree not in TREES:
        raise ValueError(f"tree: expected one of {TREES}, got {tree!r}")
    vocab = logits_width(model)
    sampled = not cfg.greedy
    temp = draft_temperature if draft_temperature is not None else (cfg.temperature if sampled else DEFAULT_GREEDY_DRAFT_TEMPERATURE)
    draft = make_draft(model, draft_model=draft_model, draft_layers=draft_layers, k=k, temperature=temp)
    builder: Any
    if tree == "dynamic":
        builder = DynamicTreeBuilder(
            budget, max_depth, k=k, sampled=sampled, seed=next_seed(), vocab_size=vocab, max_frontier=max_frontier
        )
    else:
        paths = fixed_tree_paths(budget, max_depth, k) if tree == "fixed" else chain_paths(max_depth)
        builder = StaticTreeBuilder(paths, sampled=sampled, seed=next_seed())
    return DySpecDrafter(draft, builder, vocab, tree)
