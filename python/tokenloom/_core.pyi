"""Type stubs of the compiled extension ``tokenloom._core`` (hand-written; checked with
``mypy.stubtest``). Arrays are numpy arrays; shapes are given in the docstrings of the Rust
functions and of the Python wrappers."""

from typing import Any, List, Optional, Tuple

import numpy as np
import numpy.typing as npt

__version__: str

_I64 = npt.NDArray[np.int64]

# --- verify -------------------------------------------------------------------------------
def verify_greedy(parents: _I64, tokens: _I64, target_argmax: _I64) -> Tuple[_I64, _I64]: ...
def verify_greedy_batch(
    parents: _I64, tokens: _I64, target_argmax: _I64, lengths: _I64
) -> List[Tuple[_I64, _I64]]: ...

# --- verify: trees and chains (tokenloom-core verify::{tree, chain}) -----------------------
_F = npt.NDArray[np.floating[Any]]

def verify_tree(
    parents: _I64,
    tokens: _I64,
    target_probs: _F,
    draft_probs: Optional[_F] = None,
    seed: int = 0,
    replacement: bool = True,
) -> Tuple[_I64, _I64]: ...
def verify_tree_batch(
    parents: _I64,
    tokens: _I64,
    target_probs: _F,
    lengths: _I64,
    draft_probs: Optional[_F] = None,
    seed: int = 0,
    replacement: bool = True,
) -> List[Tuple[_I64, _I64]]: ...
def verify_chain(draft_tokens: _I64, draft_probs: _F, target_probs: _F, seed: int = 0) -> Tuple[_I64, _I64]: ...
def verify_chain_batch(
    draft_tokens: _I64, draft_probs: _F, target_probs: _F, lengths: _I64, seed: int = 0
) -> List[Tuple[_I64, _I64]]: ...

# --- sampling (tokenloom-core sampling, rng) -----------------------------------------------
def probs_from_logits(
    logits: _F,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    min_p: Optional[float] = None,
) -> _F: ...
def sample_logits(
    logits: _F,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    min_p: Optional[float] = None,
    seed: int = 0,
    counter: int = 0,
    stream0: int = 0,
) -> _I64: ...
def uniforms(
    seed: int, streams: npt.NDArray[np.uint64], counters: npt.NDArray[np.uint64]
) -> npt.NDArray[np.float64]: ...
