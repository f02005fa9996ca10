"""Decoding front end: :func:`generate` and the explicit table of methods (plain decoding here;
speculative methods in :mod:`tokenloom.spec`), over the request types of :mod:`tokenloom.request`.

``tokenloom.decoding.config`` / ``.sink`` / ``.stats`` moved to :mod:`tokenloom.request`; the old
module names still import, with a DeprecationWarning."""

from __future__ import annotations

import importlib
import sys
import types
import warnings

_MOVED = {"config": "tokenloom.request.config", "sink": "tokenloom.request.sink", "stats": "tokenloom.request.stats"}


class _MovedModule(types.ModuleType):
    """``tokenloom.decoding.<old>``: every attribute read warns once and comes from the new home."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        new = _MOVED[self.__name__.rsplit(".", 1)[1]]
        warnings.warn(
            f"{self.__name__} moved to {new}; import {name} from there", DeprecationWarning, stacklevel=2
        )
        return getattr(importlib.import_module(new), name)


for _old in _MOVED:
    sys.modules.setdefault(f"{__name__}.{_old}", _MovedModule(f"{__name__}.{_old}"))
