"""Suffix drafting and the merged drafter: suffix tries of this request's tokens and of earlier
requests' outputs (:mod:`.store`), acceptance calibrated online per source (:mod:`.calibration`),
the drafter that merges suffix continuations and recycled candidates into one budgeted tree
(:mod:`.drafter`) and the factories of ``generate(method="suffix" | "merged")`` (:mod:`.method`)."""
