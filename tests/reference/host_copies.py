"""Counting what tensors hand to the host, for the accelerator-branch tests (on CPU tensors no
copy happens, so the tests count the calls that would be device-to-host transfers)."""

from __future__ import annotations

import collections
import weakref


class HostCopies:
    """Counts the elements that tensors hand to the host (``.cpu()``, ``.numpy()``,
    ``.tolist()``, ``.item()``, ``float()``, ``int()``, ``bool()``, ``index()``) inside the
    block, and the largest single crossing. On CPU tensors these are no copies at all; on an
    accelerator each one is a device-to-host transfer. A tensor ``.cpu()`` returned is on the
    host: reading it again (``.cpu().numpy()``) is not counted twice. (``.cpu()`` returns a
    copy here, as on an accelerator, so the tensor it was called on stays a device tensor.)"""

    NAMES = ("cpu", "numpy", "tolist", "item", "__float__", "__int__", "__bool__", "__index__")

    def __init__(self):
        self.total = 0
        self.largest = 0
        self.by = collections.Counter()
        self._host = weakref.WeakValueDictionary()

    def __enter__(self):
        self._saved = {n: getattr(_torch().Tensor, n) for n in self.NAMES}
        for name, fn in self._saved.items():
            setattr(_torch().Tensor, name, self._wrap(name, fn))
        return self

    def _wrap(self, name, fn):
        def counted(t, *args, **kwargs):
            out = fn(t, *args, **kwargs)
            if name == "cpu" and out is t:
                out = t.clone()
            if self._host.get(id(t)) is t:
                return out
            n = t.numel()
            self.total += n
            self.largest = max(self.largest, n)
            self.by[name] += n
            if name == "cpu":
                self._host[id(out)] = out
            return out

        return counted

    def __exit__(self, *exc):
        for name, fn in self._saved.items():
            setattr(_torch().Tensor, name, fn)


def _torch():
    import torch

    return torch
