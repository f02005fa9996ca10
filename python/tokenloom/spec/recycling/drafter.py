"""``generate(method="recycling")``: Token Recycling (arXiv 2408.08696) speculative decoding.

Each step: draft a tree below the last emitted token from the recycler's adjacency matrix (no
model call), run ONE target forward over the tree (:mod:`tokenloom.treeattn`), verify (greedy at
temperature 0, lossless deterministic-draft tree sampling otherwise), compact the KV cache to the
accepted path, overwrite the recycler rows of every tree position with the target's top-k there,
and emit the accepted tokens plus the bonus token.

With ``tree="auto"`` (default) the template is re-chosen every few steps from the nested
"2.2.2" family, maximising expected tokens per second from the calibrated step cost of this
model on this device and the observed acceptance per depth and rank (see
:mod:`tokenloom.treesize`).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Union

import numpy as np

from tokenloom.runtime.model import logits_width

from tokenloom.decoding.generate import DecodeConfig, TokenSink, register_method
from tokenloom.spec.recycling.recycler import NESTED_SIZES, TemplateSpec, TokenRecycler, default_recycler, template_paths
from tokenloom.spec.sizing import AcceptanceStats, calibrate_step_cost, choose_template

__all__ = ["decode_recycling", "RECIDE_EVERY", "SEED_FROM_PREFILL"]

#: Steps between two template decisions in ``tree="auto"`` mode.
RECIDE_EVERY = 8
#: Draft-node counts ``tree="auto"`` chooses from (0 = no draft when trees do not pay).
AUTO_SIZES = (0,) + tuple(NESTED_SIZES)
_ROOT_ONLY = np.array([-1], dtype=np.int64)
_ZERO = np.zeros(1, dtype=np.int64)
#: Default of ``seed_prefill`` (seed recycler rows from the prompt's prefill top-k). On by
#: default: on 16 Spec-Bench questions with a fresh recycler each (greedy, 64 new tokens,
#: template 2.2.2-16) it raised the mean accepted tokens from 1.262 to 1.439
#: (benches/seed_prefill_experiment.py, see docs/recycling.md).
SEED_FROM_PREFILL = True
#: Most prompt positions used for seeding (the last ones), bounding the prefill logits memory.
SEED_MAX_POSITIONS = 1024



def _stats_of(recycler: TokenRecycler) -> AcceptanceStats:
    stats = getattr(recycler, "stats", None)
    if not isinstance(stats, AcceptanceStats) or stats.k != recycler.k:
        stats = AcceptanceStats(k=recycler.k)
        recycler.stats = stats
    return stats


class _Sampling:
    """Temperature > 0: lossless deterministic-draft tree verification via
    ``tokenloom.verify.verify_tree`` on ``tokenloom.sampling.probs_from_logits``."""

    def __init__(self, cfg: DecodeConfig):
        from tokenloom.sampling.sampler import probs_from_logits
        from tokenloom.verify.kernels import verify_tree

        self.cfg = cfg
        self.probs_from_logits = probs_from_logits
        self.verify_tree = verify_tree
        self.rng = np.random.default_rng(cfg.seed) if cfg.seed is not None else None

    def __call__(self, parents: np.ndarray, tokens: np.ndarray, logits: Any) -> Any:
        c = self.cfg
        probs = self.probs_from_logits(logits, c.temperature, c.top_k, c.top_p, c.min_p)
        seed = int(self.rng.integers(0, 2**63 - 1)) if self.rng is not None else None
        return self.verify_tree(parents, tokens, probs.cpu() if hasattr(probs, "cpu") else probs, None, seed=seed)


@register_method("recycling")
def decode_recycling(
    model: Any,
    input_ids: Any,
    cfg: DecodeConfig,
    sink: TokenSink,
    *,
    recycler: Optional[TokenRecycler] = None,
    tree: Union[str, TemplateSpec] = "auto",
    seed_prefill: Optional[bool] = None,
    recide_every: int = RECIDE_EVERY,
) -> None:
    """Token Recycling decoding.

    Args (keyword, through ``tokenloom.generate``):
        recycler: the :class:`~tokenloom.recycling.TokenRecycler` to draft from and update
            (default: the process-wide one for the model's vocabulary, so the hot start is kept
            across calls).
        tree: ``"auto"`` (hardware-aware size, default), a template name (``"2.2.2"``,
            ``"2.2.2-N"``) or a list of rank paths.
        seed_prefill: seed rows from the prompt's prefill top-k (default
            :data:`SEED_FROM_PREFILL`).
        recide_every: steps between template decisions in auto mode.

    Stats: ``sink.extra`` gets ``tree_sizes`` (steps per draft-node count), ``accepted_hist``
    (steps per accepted draft count), ``depth_acceptance`` (estimated P(match | reached depth
    d)), ``calibration`` (auto mode: tree tokens -> seconds) and ``seeded``.
    """
    import torch
    from transformers import DynamicCache

    from tokenloom.runtime.kvcache import compact_cache
    from tokenloom.runtime.treeattn import tree_forward
    from tokenloom.verify.kernels import verify_greedy

    vocab = logits_width(model)
    rec = recycler if recycler is not None else default_recycler(vocab)
    if rec.vocab_size < vocab:
        raise ValueError(f"recycler: vocab_size {rec.vocab_size} is smaller than the model's {vocab}")
    k = rec.k
    stats = _stats_of(rec)
    auto = isinstance(tree, str) and tree == "auto"
    cost = None
    candidates: List[List[int]] = []
    if auto:
        cost = calibrate_step_cost(model, k=k)
        candidates = [p for p in template_paths("2.2.2") if max(p) < k]
    else:
        rec.set_template(tree)
    seed = SEED_FROM_PREFILL if seed_prefill is None else bool(seed_prefill)
    sample = None if cfg.greedy else _Sampling(cfg)

    # Prefill.
    cache = DynamicCache()
    n_prompt = int(input_ids.shape[1])
    keep = min(n_prompt, SEED_MAX_POSITIONS) if seed else 1
    out = model(input_ids=input_ids, past_key_values=cache, use_cache=True, logits_to_keep=keep)
    logits = out.logits[0].float()
    if seed:
        topk = logits.topk(k, dim=-1).indices.cpu()
        rec.seed_from_prefill(input_ids[0, n_prompt - keep :].cpu(), topk)
    last = logits[-1:]
    if sample is None:
        first = int(last[0].argmax())
    else:
        first = int(sample(np.array([-1], dtype=np.int64), input_ids[0, -1:].cpu().numpy(), last).tokens[-1])
    tree_sizes: Dict[int, int] = {}
    accepted_hist: Dict[int, int] = {}
    extra: Dict[str, Any] = {"seeded": seed}
    sink.extra = extra
    if sink.emit([first]):
        return
    root = first
    past = n_prompt
    step = 0
    plain = False
    while True:
        if auto and step % max(1, recide_every) == 0:
            assert cost is not None
            paths, _ = choose_template(candidates, stats, cost, AUTO_SIZES)
            plain = not paths
            if paths:
                rec.set_template(paths)
        step += 1
        if plain:  # auto chose no draft: a one-node tree (still learning the root's row)
            tokens, parents, depths = np.array([root], dtype=np.int64), _ROOT_ONLY, _ZERO
        else:
            draft = rec.draft(root)
            tokens, parents, depths = draft.tokens, draft.parents, draft.depths
        logits = tree_forward(model, cache, torch.from_numpy(tokens), parents, depths, past_len=past)
        topk = logits.topk(k, dim=-1).indices.cpu()
        if sample is None:
            res = verify_greedy(parents, tokens, logits.argmax(-1).cpu())
        else:
            res = sample(parents, tokens, logits)
        path = np.asarray(res.path, dtype=np.int64)
        emitted = np.asarray(res.tokens, dtype=np.int64)
        stats.observe(rec.ranks_of(tokens[path], emitted).tolist())
        rec.update(tokens, topk)
        compact_cache(cache, past, path.tolist())
        past += len(path)
        n_nodes = len(tokens) - 1
        tree_sizes[n_nodes] = tree_sizes.get(n_nodes, 0) + 1
        accepted_hist[len(path) - 1] = accepted_hist.get(len(path) - 1, 0) + 1
        if sink.emit(emitted.tolist()):
            break
        root = int(emitted[-1])
    extra["tree_sizes"] = dict(sorted(tree_sizes.items()))
    extra["accepted_hist"] = dict(sorted(accepted_hist.items()))
    extra["depth_acceptance"] = stats.depth_acceptance()
    if cost is not None:
        extra["calibration"] = dict(zip(cost.tokens, cost.seconds))
