"""tokenloom: exact, fast decoding kernels for LLMs (Rust core, thin Python layer).

Package map (each subpackage's docstring says more):

* ``request``: what a request is and returns (the validated config, the token sink, statistics),
  below everything that decodes;
* ``decoding``: :func:`generate` and the method table, on top;
* ``spec``: speculative decoding — the Drafter protocol, one draft-tree type, one tree-step loop,
  drafters (``recycling``, ``dyspec``, ``lookup``, ``suffix``, ``merged``), tree templates and sizing,
  the step API;
* ``verify`` and ``sampling``: lossless verification kernels and the exact sampler;
* ``runtime``: tree attention, KV-cache operations, pre-packed CPU linears;
* ``bytelevel``: exact byte-level probabilities from token-level models;
* ``scores``: per-token uncertainty (log-probs, entropy, ranks), detection scores, drift KL;
* ``cascades``: small-to-large deferral on token-level uncertainty, cost-quality curves;
* ``integrations``: Hugging Face (``integrations.hf``: custom_generate, model loading, chat);
* ``cli`` and ``eval``: the command line and the benchmark harnesses.

Heavy dependencies (torch, transformers) are imported lazily, inside the functions that
need them, so ``import tokenloom`` stays cheap.
"""

from tokenloom import _core
from tokenloom.bytelevel.budget import MemoryBoundError
from tokenloom.bytelevel.ensemble import ByteEnsemble
from tokenloom.bytelevel.lm import ByteLM
from tokenloom.bytelevel.vocab import ByteVocab
from tokenloom.decoding.generate import GenerateOutput, GenerateStats, generate, methods, register_method
from tokenloom.decoding.methods import register_drafter
from tokenloom.integrations.hf import models
from tokenloom.sampling.sampler import Sampler, probs_from_logits
from tokenloom.spec.dyspec.builder import DynamicTree, DynamicTreeBuilder, Frontier
from tokenloom.spec.dyspec.drafts import EarlyExitDraft, HFDraft
from tokenloom.spec.base import DraftTree, Drafter
from tokenloom.spec.recycling.recycler import TokenRecycler
from tokenloom.spec.stats import SpecStats
from tokenloom.verify.kernels import (
    VerifyResult,
    verify_chain,
    verify_chain_batch,
    verify_greedy,
    verify_greedy_batch,
    verify_tree,
    verify_tree_batch,
)

__version__ = _core.__version__

__all__ = [
    "models",
    "ByteEnsemble",
    "ByteLM",
    "ByteVocab",
    "DraftTree",
    "Drafter",
    "DynamicTree",
    "DynamicTreeBuilder",
    "EarlyExitDraft",
    "Frontier",
    "GenerateOutput",
    "GenerateStats",
    "HFDraft",
    "MemoryBoundError",
    "Sampler",
    "SpecStats",
    "TokenRecycler",
    "VerifyResult",
    "generate",
    "methods",
    "probs_from_logits",
    "register_drafter",
    "register_method",
    "verify_chain",
    "verify_chain_batch",
    "verify_greedy",
    "verify_greedy_batch",
    "verify_tree",
    "verify_tree_batch",
    "__version__",
]

_LAZY = {
    "packed_linears": "tokenloom.runtime.cpupack",
    "pack_available": "tokenloom.runtime.cpupack",
    "kl_drift": "tokenloom.scores.drift",
    "cascade": "tokenloom.cascades.run",
}


def __getattr__(name: str):  # lazy: tokenloom.hf / tokenloom.packed_linears import torch on use
    import importlib

    if name == "hf":
        return importlib.import_module("tokenloom.integrations.hf")
    if name == "scores":
        return importlib.import_module("tokenloom.scores")
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
