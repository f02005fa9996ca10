"""tokenloom: exact, fast decoding kernels for LLMs (Rust core, thin Python layer).

Heavy dependencies (torch, transformers) are imported lazily, inside the functions that
need them, so ``import tokenloom`` stays cheap.
"""

from . import models
from ._core import __version__
from .drafts import EarlyExitDraft, HFDraft
from .dyspec import DynamicTree, DynamicTreeBuilder, Frontier
from .byteensemble import ByteEnsemble
from .bytelm import ByteLM
from .bytevocab import ByteVocab
from .generation import GenerateOutput, GenerateStats, generate, methods, register_method
from .recycling import DraftTree, TokenRecycler
from .sampling import Sampler, probs_from_logits
from .verify import (
    VerifyResult,
    verify_chain,
    verify_chain_batch,
    verify_greedy,
    verify_greedy_batch,
    verify_tree,
    verify_tree_batch,
)

__all__ = [
    "models",
    "ByteEnsemble",
    "ByteLM",
    "ByteVocab",
    "DraftTree",
    "DynamicTree",
    "DynamicTreeBuilder",
    "EarlyExitDraft",
    "Frontier",
    "GenerateOutput",
    "GenerateStats",
    "HFDraft",
    "Sampler",
    "TokenRecycler",
    "VerifyResult",
    "generate",
    "methods",
    "probs_from_logits",
    "register_method",
    "verify_chain",
    "verify_chain_batch",
    "verify_greedy",
    "verify_greedy_batch",
    "verify_tree",
    "verify_tree_batch",
    "__version__",
]


_LAZY = {"packed_linears": "cpupack", "pack_available": "cpupack"}


def __getattr__(name: str):  # lazy: tokenloom.hf / tokenloom.cpupack import torch
    import importlib

    if name == "hf":
        return importlib.import_module(".hf", __name__)
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
