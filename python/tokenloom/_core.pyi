"""Type stubs of the compiled extension ``tokenloom._core`` (hand-written; checked with
``mypy.stubtest``). Arrays are numpy arrays; shapes are given in the docstrings of the Rust
functions and of the Python wrappers."""

from typing import List, Tuple

import numpy as np
import numpy.typing as npt

__version__: str

_I64 = npt.NDArray[np.int64]

# --- verify -------------------------------------------------------------------------------
def verify_greedy(parents: _I64, tokens: _I64, target_argmax: _I64) -> Tuple[_I64, _I64]: ...
def verify_greedy_batch(
    parents: _I64, tokens: _I64, target_argmax: _I64, lengths: _I64
) -> List[Tuple[_I64, _I64]]: ...
