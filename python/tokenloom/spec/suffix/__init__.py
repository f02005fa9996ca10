"""Suffix drafting's state: suffix tries of this request's tokens and of earlier requests'
outputs (:mod:`.store`). The drafter that turns suffix matches into trees, alone
(``method="suffix"``) or merged with recycled candidates (``"merged"``), lives in
:mod:`tokenloom.spec.merged`; the old module names ``tokenloom.spec.suffix.drafter`` /
``.method`` / ``.calibration`` still import, with a DeprecationWarning."""

from __future__ import annotations

from tokenloom._moved import install_moved

install_moved(
    __name__,
    {
        "calibration": "tokenloom.spec.merged.calibration",
        "drafter": "tokenloom.spec.merged.drafter",
        "method": "tokenloom.spec.merged.method",
    },
)
