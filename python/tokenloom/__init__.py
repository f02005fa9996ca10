"""tokenloom: exact, fast decoding kernels for LLMs (Rust core, thin Python layer).

Heavy dependencies (torch, transformers) are imported lazily, inside the functions that
need them, so ``import tokenloom`` stays cheap.
"""

from ._core import __version__
from .generation import GenerateOutput, GenerateStats, generate, methods, register_method
from .recycling import DraftTree, TokenRecycler
from .verify import VerifyResult, verify_greedy, verify_greedy_batch

__all__ = [
    "DraftTree",
    "GenerateOutput",
    "GenerateStats",
    "TokenRecycler",
    "VerifyResult",
    "__version__",
    "generate",
    "methods",
    "register_method",
    "verify_greedy",
    "verify_greedy_batch",
]
