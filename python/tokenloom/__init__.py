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


def __getattr__(name: str):  # lazy: tokenloom.hf imports torch and transformers
    if name == "hf":
        import importlib

        return importlib.import_module(".hf", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
