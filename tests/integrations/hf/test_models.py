"""Model loading helpers: the dtype a loaded model is cast to (``load_or_default(dtype=)``, the
CLI's and the bench's ``--dtype``)."""

import pytest
import torch

from tokenloom.integrations.hf import models


def test_dtype_is_checked_before_anything_loads(monkeypatch):
    def no_load(*_a, **_k):
        raise AssertionError("nothing may load for a bad dtype")

    monkeypatch.setattr(models, "load_default", no_load)
    monkeypatch.setattr(models, "load", no_load)
    for bad in ("float16", "fp32", "", 32, torch.float32):
        with pytest.raises(ValueError, match="dtype: expected one of float32, bfloat16"):
            models.load_or_default(dtype=bad)
    assert models.check_dtype(None) == "float32" and models.check_dtype("bfloat16") == "bfloat16"


def test_weights_are_cast_to_the_dtype(monkeypatch):
    from tokenloom.integrations.hf.models import make_tiny_llama

    made = []

    def fake_default(verbose=False):
        made.append(make_tiny_llama(layers=1))
        return made[-1], "tok"

    monkeypatch.setattr(models, "load_default", fake_default)
    model, tok = models.load_or_default(dtype="bfloat16")
    assert tok == "tok" and {p.dtype for p in model.parameters()} == {torch.bfloat16}
    model, _ = models.load_or_default()
    assert {p.dtype for p in model.parameters()} == {torch.float32}
