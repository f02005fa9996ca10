"""Speculative decoding: the :class:`~tokenloom.spec.base.Drafter` protocol, its chain form
:class:`~tokenloom.spec.base.ChainDrafter` and the one draft-tree type (:mod:`.base`), the one
tree-step loop (:mod:`.loop`), its statistics (:mod:`.stats`), tree templates
(:mod:`.templates`), hardware-aware sizing (:mod:`.sizing`) and the measured speed choices with
their calibration rules (:mod:`.calibration`), the step API for hand-written loops
(:mod:`.step`) and one drafter per file or subpackage, each with its chain form where it has
one: :mod:`.recycling`, :mod:`.dyspec`, :mod:`.lookup`, :mod:`.merged` (the merged drafter,
methods "merged" and "suffix"), :mod:`.suffix` (suffix tries); the table of chain drafters for
serving stacks (:mod:`.chains`); drafter state kept across processes: :mod:`.persist`."""

from tokenloom._moved import install_moved

# top_k_ids / argmax_ids live with the other operations on logit rows now
install_moved(__name__, {"topk": "tokenloom.sampling.topk"})
