"""Shared fixtures: the embedded model (session-scoped, ~20-30 s to load once) and a tiny
random-weight Llama built from a config (:func:`tokenloom.integrations.hf.models.make_tiny_llama`),
with the embedded model's real tokenizer."""

from __future__ import annotations

import os
import tempfile

import pytest

from tokenloom.integrations.hf.models import make_tiny_llama  # noqa: F401  (tests import it from here)


def pytest_configure(config):
    """The suite never writes to the user's cache: drafter states and step-cost calibrations
    go to a temporary folder (per test, see ``_private_cache_dir``; this one covers session
    fixtures and what is saved at exit)."""
    os.environ["TOKENLOOM_CACHE_DIR"] = tempfile.mkdtemp(prefix="tokenloom-test-cache-")


@pytest.fixture(autouse=True)
def _private_cache_dir(tmp_path, monkeypatch):
    """Each test gets its own cache folder (persisted drafter states do not leak between tests)."""
    path = tmp_path / "tokenloom-cache"
    monkeypatch.setenv("TOKENLOOM_CACHE_DIR", str(path))
    return path


@pytest.fixture(scope="session")
def smollm():
    """(model, tokenizer) of the embedded SmolLM2-135M-Instruct."""
    from tokenloom.integrations.hf.models import load_default

    return load_default()


@pytest.fixture(scope="session")
def tokenizer():
    """The embedded model's tokenizer (49,152 tokens, byte-level BPE)."""
    from tokenloom.integrations.hf.models import load_default_tokenizer

    return load_default_tokenizer()


@pytest.fixture(scope="session")
def tiny_llama():
    """A 2-layer random Llama with the embedded model's vocabulary size."""
    return make_tiny_llama()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run faster on one thread, and far faster on a shared, busy machine.
    Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
