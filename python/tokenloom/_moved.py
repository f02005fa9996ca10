"""Old module paths kept importable after a move: :func:`install_moved` puts a stand-in module
under each old name whose every attribute read warns (DeprecationWarning) and comes from the
new home."""

from __future__ import annotations

import importlib
import sys
import types
import warnings
from typing import Dict

__all__ = ["MovedModule", "install_moved"]


class MovedModule(types.ModuleType):
    """A moved module's old name: every attribute read warns and comes from ``new_home``.

    Args:
        name: the old dotted module name.
        new_home: the dotted name of the module that holds the names now.
    """

    def __init__(self, name: str, new_home: str):
        super().__init__(name, f"Moved to {new_home} (this name warns on use).")
        self.__dict__["_new_home"] = new_home

    def __getattr__(self, name: str):
        if name.startswith("__") and name != "__all__":  # __all__: ``from old import *`` works too
            raise AttributeError(name)
        new = self.__dict__["_new_home"]
        warnings.warn(f"{self.__name__} moved to {new}; import {name} from there", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(new), name)

    def __dir__(self):
        return sorted(set(dir(importlib.import_module(self.__dict__["_new_home"]))))


def install_moved(package: str, moved: Dict[str, str]) -> None:
    """Register ``package.<old>`` as a :class:`MovedModule` of ``moved[old]`` for every old
    submodule name (a real module already imported under that name is left alone)."""
    for old, new in moved.items():
        sys.modules.setdefault(f"{package}.{old}", MovedModule(f"{package}.{old}", new))
