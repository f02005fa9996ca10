"""Shared fixtures: the embedded model (session-scoped, ~20-30 s to load once) and a tiny
random-weight Llama built from a config, with the embedded model's real tokenizer."""

from __future__ import annotations

import os
import tempfile

import pytest


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


def make_tiny_llama(vocab_size: int = 49152, seed: int = 0, layers: int = 2):
    """A random-weight Llama small enough for structural tests (about 3 M params at 49k vocab)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    # Sharpen the random logits so that the tiny model has real preferences.
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    return model


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
