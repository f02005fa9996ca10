"""Hugging Face transformers: ``custom_generate`` callables and the assisted-generation candidate
generator (:mod:`.custom_generate`), model loading (:mod:`.models`) and the chat helper
(:mod:`.chat`). Importing this package does not import torch; the callables below load
:mod:`.custom_generate` (and transformers) on first use."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "RecyclingCandidateGenerator",
    "recycling_assisted_generate",
    "recycling_generate",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module(f"{__name__}.custom_generate"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
