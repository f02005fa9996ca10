"""Decoding front end: :func:`generate` and the explicit table of methods (plain decoding here;
speculative methods in :mod:`tokenloom.spec`), over the request types of :mod:`tokenloom.request`.

``tokenloom.decoding.config`` / ``.sink`` / ``.stats`` moved to :mod:`tokenloom.request`; the old
module names still import, with a DeprecationWarning."""

from __future__ import annotations

from tokenloom._moved import install_moved

install_moved(__name__, {"config": "tokenloom.request.config", "sink": "tokenloom.request.sink", "stats": "tokenloom.request.stats"})
