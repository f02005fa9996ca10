"""tokenloom: exact, fast decoding kernels for LLMs (Rust core, thin Python layer).

Heavy dependencies (torch, transformers) are imported lazily, inside the functions that
need them, so ``import tokenloom`` stays cheap.
"""

from ._core import __version__
from .byteensemble import ByteEnsemble
from .bytelm import ByteLM
from .bytevocab import ByteVocab
from .generation import GenerateOutput, GenerateStats, generate, methods, register_method
from .verify import VerifyResult, verify_greedy, verify_greedy_batch

__all__ = [
    "ByteEnsemble",
    "ByteLM",
    "ByteVocab",
    "GenerateOutput",
    "GenerateStats",
    "VerifyResult",
    "__version__",
    "generate",
    "methods",
    "register_method",
    "verify_greedy",
    "verify_greedy_batch",
]
