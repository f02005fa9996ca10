"""Input adapters: numpy arrays, torch tensors (CPU or CUDA) and sequences to the contiguous
numpy arrays the Rust kernels take. Torch is never imported here unless a tensor is passed (or
asked for, :func:`as_int_tensor`)."""

from __future__ import annotations

from typing import Any, Optional

import operator

import numpy as np

__all__ = ["as_array", "as_count", "as_float_array", "as_fraction", "as_ids", "as_int", "as_int_tensor", "is_torch"]


def is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


_INT64 = np.dtype(np.int64)
_FLOAT32 = np.dtype(np.float32)
_FLOAT64 = np.dtype(np.float64)


def as_int(x: Any, name: str) -> int:
    """``x`` as a Python int: an int, a numpy integer scalar or anything else with
    ``__index__`` (a one-element integer tensor); floats, strings and bools are refused, never
    truncated or parsed. The range is the kernel's to check.

    Raises:
        TypeError: ``x`` is not an integer.
    """
    if not isinstance(x, bool):
        try:
            return operator.index(x)
        except TypeError:
            pass
    raise TypeError(f"{name}: expected an int, got {type(x).__name__}")


def as_count(x: Any, name: str, lo: int, hi: Optional[int] = None) -> int:
    """``x`` as a Python int >= ``lo`` (and <= ``hi`` when given: a documented cap) -- a size, a
    budget, a count: an int or a numpy integer scalar; bools, floats and strings are refused.

    Raises:
        ValueError: not such an int, or out of range.
    """
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or x < lo or (hi is not None and x > hi):
        want = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name}: expected an int {want}, got {x!r}")
    return int(x)


def as_fraction(x: Any, name: str) -> float:
    """``x`` as a float in [0, 1] (a weight, a cost in accepted tokens): an int or a float;
    bools, strings and NaN are refused.

    Raises:
        ValueError: not such a number.
    """
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not 0.0 <= x <= 1.0:
        raise ValueError(f"{name}: expected a number in [0, 1], got {x!r}")
    return float(x)


def as_array(x: Any, dtype: Any, name: str, ndim: int) -> np.ndarray:
    """``x`` as a C-contiguous numpy array of ``dtype`` and ``ndim`` dimensions.

    Integer inputs must be integers (floats are refused rather than truncated); CUDA tensors
    are copied to the host, so pass only what a kernel needs.

    Raises:
        ValueError: wrong number of dimensions, or a float array where ids are expected.
        TypeError: ``x`` is not array-like.
    """
    # Fast path (the common case in serving loops): already the exact array the kernel takes.
    if type(x) is np.ndarray and x.ndim == ndim and x.dtype == dtype and x.flags.c_contiguous:
        return x
    if is_torch(x):
        arr = x.detach().cpu().numpy()  # .cpu() returns a host tensor itself
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


def as_ids(x: Any, name: str, vocab_size: int, ndim: int = 1) -> np.ndarray:
    """``x`` as token ids: a C-contiguous int64 array of ``ndim`` dimensions (:func:`as_array`:
    floats refused, never truncated), every id in ``[0, vocab_size)``. Check a whole input with
    it before changing any state.

    Raises:
        ValueError: wrong number of dimensions, or not integers. TypeError: not array-like.
        IndexError: an id outside ``[0, vocab_size)`` (the first one is named).
    """
    arr = as_array(x, np.int64, name, ndim)
    if arr.size:
        bad = np.flatnonzero((arr < 0) | (arr >= vocab_size))
        if bad.size:
            raise IndexError(f"{name}: token id {int(arr.flat[bad[0]])} is outside the vocabulary [0, {vocab_size})")
    return arr


def as_int_tensor(x: Any, name: str, ndim: int = 1) -> Any:
    """``x`` as an integer torch tensor of ``ndim`` dimensions, left where it is (a tensor on
    an accelerator stays there; anything else goes through :func:`as_array`). Float, complex
    and bool tensors are refused, never truncated.

    Raises:
        ValueError: wrong number of dimensions, or not integers. TypeError: not array-like.
    """
    import torch

    if not is_torch(x):
        return torch.from_numpy(as_array(x, np.int64, name, ndim))
    if x.dtype == torch.bool or x.is_floating_point() or x.is_complex():
        raise ValueError(f"{name}: expected integer ids, got dtype {x.dtype}")
    if x.dim() != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array, got shape {tuple(x.shape)}")
    return x


def as_float_array(x: Any, name: str, ndim: int) -> np.ndarray:
    """``x`` as a float32 or float64 numpy array of ``ndim`` dimensions, without a copy when it
    already is one (CPU torch tensors cross through ``.numpy()``; other float dtypes convert by
    value: float16 / bfloat16 to float32, byte-swapped float64 to float64). For ``ndim == 3``
    the leading (batch) axis may keep any stride, e.g. a broadcast view, as long as every
    trailing 2-D block is C-contiguous.

    Raises:
        ValueError: wrong number of dimensions, or not a floating-point array.
        TypeError: ``x`` is not array-like.
    """
    if type(x) is np.ndarray and x.ndim == ndim and (x.dtype == _FLOAT32 or x.dtype == _FLOAT64) and x.flags.c_contiguous:
        return x
    if is_torch(x):
        import torch

        x = x.detach().cpu()  # a host tensor itself, no copy
        if x.dtype not in (torch.float32, torch.float64):
            if not x.is_floating_point():
                raise ValueError(f"{name}: expected a float tensor, got dtype {x.dtype}")
            x = x.float()
        arr = x.numpy()
    elif isinstance(x, np.ndarray):
        arr = x
    else:
        try:
            arr = np.asarray(x)
        except Exception as e:  # pragma: no cover
            raise TypeError(f"{name}: expected an array, got {type(x).__name__}") from e
        if arr.dtype.kind in "iub" and arr.size:
            raise ValueError(f"{name}: expected a float array, got dtype {arr.dtype}")
        if arr.dtype.kind in "iub":
            arr = arr.astype(np.float64)
    if arr.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array, got shape {tuple(arr.shape)}")
    if arr.dtype.kind != "f":
        raise ValueError(f"{name}: expected a float array, got dtype {arr.dtype}")
    if arr.dtype not in (_FLOAT32, _FLOAT64):
        # By value, never by byte order: a byte-swapped float64 stays float64 (a float32 cast
        # would flush 1e-300 to 0 and overflow 1e300 to inf); float16 becomes float32.
        arr = arr.astype(_FLOAT64 if arr.dtype.itemsize >= 8 else _FLOAT32)
    if ndim == 3 and arr.shape[0] > 0 and not arr.flags.c_contiguous:
        block = arr[0]
        if block.flags.c_contiguous:
            return arr
    return np.ascontiguousarray(arr)
