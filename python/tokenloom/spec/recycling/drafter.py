"""``generate(method="recycling")``: Token Recycling (arXiv 2408.08696) as a
:class:`~tokenloom.spec.base.Drafter`.

Drafting needs no model call: the tree below the root is read from the recycler's adjacency
matrix with the drafter's template. After each verified step the rows of every tree position
are overwritten with the target's top-k there (the paper's update rule) and the acceptance
statistics learn where the target's next token stood in each accepted node's row.

With ``tree="auto"`` (default) the template is re-chosen every :data:`RESIZE_EVERY` steps from
the nested "2.2.2" family, maximising expected tokens per second from the calibrated step cost
of this model on this device and the observed acceptance per depth and rank (see
:mod:`tokenloom.spec.sizing`).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Union

from tokenloom._arrays import as_count
from tokenloom.spec.base import DraftTree
from tokenloom.spec.sizing import AcceptanceStats, StepCost, choose_template
from tokenloom.spec.templates import NESTED_SIZES, Template, TemplateSpec, compile_template, template_paths
from tokenloom.sampling.topk import top_k_ids

__all__ = ["AUTO_SIZES", "RESIZE_EVERY", "SEED_FROM_PREFILL", "SEED_MAX_POSITIONS", "RecyclingDrafter", "resolve_seed_prefill"]

#: Steps between two template decisions in ``tree="auto"`` mode.
RESIZE_EVERY = 8
#: Draft-node counts ``tree="auto"`` chooses from (0 = no draft when trees do not pay).
AUTO_SIZES = (0,) + tuple(NESTED_SIZES)
#: Default of ``seed_prefill`` (seed recycler rows from the prompt's prefill top-k), for Token
#: Recycling and the merged drafter. Off by default since session 12: with ``tree="auto"`` /
#: ``budget="auto"`` it cost more than it gave. Seeding computes the head's logits and top-k at
#: up to :data:`SEED_MAX_POSITIONS` prompt positions; measured on the embedded model (AMD EPYC,
#: float32, idle, a fresh recycler per run, greedy), 9 single prompts of 40-769 tokens x 96 new
#: tokens: off was as fast or faster in 17 of 18 (method, prompt) pairs, up to 1.32x
#: (recycling) and 1.22x (merged), with as many or fewer target steps; a batch of 8 prompts x 32
#: tokens: recycling 2.12x -> 2.88x and merged 2.52x -> 3.03x HF batched greedy (plain 2.46x).
#: The earlier gain (mean accepted tokens 1.262 -> 1.439 with the fixed template 2.2.2-16,
#: benches/experiments/seed_prefill_experiment.py) does not carry over to sized trees.
SEED_FROM_PREFILL = False
#: Most prompt positions used for seeding (the last ones), bounding the prefill logits memory.
SEED_MAX_POSITIONS = 1024


def resolve_seed_prefill(seed_prefill: Optional[bool]) -> bool:
    """A method's ``seed_prefill`` argument: None -> :data:`SEED_FROM_PREFILL`, else its truth."""
    return SEED_FROM_PREFILL if seed_prefill is None else bool(seed_prefill)


class RecyclingDrafter:
    """Token Recycling drafts from a (possibly shared) :class:`TokenRecycler`.

    The drafter owns its template and its :class:`~tokenloom.spec.sizing.AcceptanceStats`; the
    recycler shares only the matrix (thread-safe in Rust).

    Args:
        recycler: the :class:`~tokenloom.spec.recycling.recycler.TokenRecycler` to draft from
            and update.
        tree: ``"auto"`` (hardware-aware size, needs ``cost``), a template name (``"2.2.2"``,
            ``"2.2.2-N"``), rank paths, or a compiled template.
        seed_prefill: seed rows from the prompt's prefill top-k.
        cost: the calibrated step cost (``tree="auto"`` only; see
            :func:`~tokenloom.spec.sizing.calibrate_step_cost`).
        resize_every: steps between template decisions in auto mode (>= 1).
        acceptance: the statistics to start from (owned by this drafter from now on; default
            fresh ones, i.e. the prior).
        remember: called with this drafter's statistics at every template decision, e.g.
            :meth:`~tokenloom.spec.sizing.StatsMemory.save` so the next request starts warm.
        finish: called once when the request ends (:meth:`finish`), e.g. to persist the
            recycler (:func:`~tokenloom.spec.recycling.recycler.recycler_changed`).
        setup_seconds: one-time set-up spent building this drafter (the step-cost
            calibration), reported in :meth:`stats` so ``generate`` can count it apart.

    Raises:
        ValueError: a bad template or one with a rank >= ``recycler.k``; ``tree="auto"``
            without ``cost``; ``resize_every < 1``.
    """

    name = "recycling"

    def __init__(
        self,
        recycler: Any,
        *,
        tree: Union[str, TemplateSpec, Template] = "auto",
        seed_prefill: bool = SEED_FROM_PREFILL,
        cost: Optional[StepCost] = None,
        resize_every: int = RESIZE_EVERY,
        acceptance: Optional[AcceptanceStats] = None,
        remember: Optional[Callable[[AcceptanceStats], None]] = None,
        finish: Optional[Callable[[], None]] = None,
        setup_seconds: float = 0.0,
    ):
        self.recycler = recycler
        self.k = recycler.k
        self.auto = isinstance(tree, str) and tree == "auto"
        self.seed_prefill = bool(seed_prefill)
        self.prefill_positions = SEED_MAX_POSITIONS if self.seed_prefill else 1
        self.resize_every = as_count(resize_every, "resize_every", 1)  # checked whatever the tree
        self.acceptance = acceptance if acceptance is not None else AcceptanceStats(k=self.k)
        if self.acceptance.k != self.k:
            raise ValueError(f"acceptance: statistics for k={self.acceptance.k}, recycler k={self.k}")
        self._remember = remember
        self._finish = finish
        self.setup_seconds = float(setup_seconds)
        self.cost = cost
        self._step = 0
        self._candidates: List[List[int]] = []
        self.template: Optional[Template] = None
        if self.auto:
            if cost is None:
                raise ValueError('tree="auto" needs the calibrated step cost (cost=calibrate_step_cost(model))')
            self._candidates = [p for p in template_paths("2.2.2") if max(p) < self.k]
        else:
            self.template = compile_template(tree)  # type: ignore[arg-type]
            if self.template.max_rank >= self.k:
                raise ValueError(f"tree: rank {self.template.max_rank} needs k > {self.template.max_rank}, recycler k={self.k}")

    def prefill(self, input_ids: Any, first_token: int, cache: Any, logits: Any) -> None:
        """Seed the rows of the prompt's last tokens with the top-k after each (when on)."""
        if self.seed_prefill:
            m = int(logits.shape[0])
            topk = top_k_ids(logits, self.k)
            self.recycler.seed_from_prefill(input_ids[0, -m:].cpu(), topk)

    def _resize(self) -> None:
        assert self.cost is not None
        if self._remember is not None and self._step:
            self._remember(self.acceptance)
        paths, _ = choose_template(self._candidates, self.acceptance, self.cost, AUTO_SIZES)
        self.template = compile_template(paths) if paths else None

    def propose(self, root: int, past_len: int) -> DraftTree:
        """The template's tree below ``root`` (a root-only tree when auto mode chose no draft)."""
        if self.auto and self._step % self.resize_every == 0:
            self._resize()
        self._step += 1
        if self.template is None:
            return DraftTree.root_only(root)
        return self.recycler.draft(root, self.template)

    def accept(self, tree: DraftTree, result: Any, logits: Any) -> None:
        """Update every tree position's row with the target's top-k; learn the acceptance."""
        topk = top_k_ids(logits, self.k)
        tokens = tree.tokens
        self.acceptance.observe(self.recycler.ranks_of(tokens[result.path], result.tokens).tolist())
        self.recycler.update(tokens, topk)

    def finish(self) -> None:
        """The request ended: run the ``finish`` callback (persisting the recycler)."""
        if self._finish is not None:
            self._finish()

    def stats(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"seeded": self.seed_prefill, "depth_acceptance": self.acceptance.depth_acceptance()}
        if self.cost is not None:
            out["calibration"] = dict(zip(self.cost.tokens, self.cost.seconds))
            out["setup_seconds"] = self.setup_seconds
        return out
