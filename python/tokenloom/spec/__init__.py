"""Speculative decoding: the :class:`~tokenloom.spec.base.Drafter` protocol and the one draft-tree
type (:mod:`.base`), the one tree-step loop (:mod:`.loop`), its statistics (:mod:`.stats`), tree
templates (:mod:`.templates`), hardware-aware sizing (:mod:`.sizing`) and the measured speed
choices with their calibration rules (:mod:`.calibration`), the step API for
hand-written loops (:mod:`.step`) and one drafter per file or subpackage: :mod:`.recycling`,
:mod:`.dyspec`, :mod:`.lookup`, :mod:`.suffix` (suffix drafting and the merged drafter); drafter
state kept across processes: :mod:`.persist`."""
