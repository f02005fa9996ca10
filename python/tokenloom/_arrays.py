"""Input adapters: numpy arrays, torch tensors (CPU or CUDA) and sequences to the contiguous
numpy arrays the Rust kernels take. Torch is never imported here unless a tensor is passed."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["as_array", "is_torch"]


def is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def as_array(x: Any, dtype: Any, name: str, ndim: int) -> np.ndarray:
    """``x`` as a C-contiguous numpy array of ``dtype`` and ``ndim`` dimensions.

    Integer inputs must be integers (floats are refused rather than truncated); CUDA tensors
    are copied to the host, so pass only what a kernel needs.

    Raises:
        ValueError: wrong number of dimensions, or a float array where ids are expected.
        TypeError: ``x`` is not array-like.
    """
    if is_torch(x):
        x = x.detach()
        if x.device.type != "cpu":
            x = x.cpu()
        arr = x.numpy()
    elif isinstance(x, np.ndarray):
        arr = x
    else:
        try:
            arr = np.asarray(x)
        except Exception as e:  # pragma: no cover - numpy's own message is clear
            raise TypeError(f"{name}: expected an array, got {type(x).__name__}") from e
        if arr.dtype == object:
            raise TypeError(f"{name}: expected a numeric array, got {type(x).__name__}")
    if arr.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array, got shape {tuple(arr.shape)}")
    want = np.dtype(dtype)
    if arr.size and want.kind in "iu" and arr.dtype.kind not in "iub":
        raise ValueError(f"{name}: expected integer ids, got dtype {arr.dtype}")
    if want.kind == "f" and arr.dtype.kind not in "fiub":
        raise ValueError(f"{name}: expected a float array, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=want)
