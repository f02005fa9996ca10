"""tokenloom.runtime.compat on whichever transformers line is installed (CI runs the suite on
4.57 and on the newest 5.x): each helper against what that line's own objects do, and the
embedded model exported to an HF directory and loaded back (tokenizer and greedy tokens)."""

from __future__ import annotations

import json

import pytest
import torch

from tokenloom.runtime.compat import (
    TOKENIZER_CLASS,
    cache_arg,
    chat_ids,
    init_cache_layer,
    is_default_position_ids,
    output_cache,
    transformers_version,
)


def test_version_in_supported_range():
    assert (4, 57) <= transformers_version() < (6, 0)


def test_position_ids():
    assert is_default_position_ids(None, 3)
    assert is_default_position_ids(torch.arange(3).view(1, 3), 3)
    assert not is_default_position_ids(torch.arange(1, 4).view(1, 3), 3)
    assert not is_default_position_ids(torch.arange(4).view(1, 4), 3)


def test_cache_keyword_and_layer_init(tiny_llama):
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    (name,) = cache_arg(tiny_llama, None)
    assert name in ("past_key_values", "cache")
    cache = DynamicCache()
    out = tiny_llama(input_ids=torch.tensor([[1, 5, 9]]), use_cache=True, **cache_arg(tiny_llama, cache))
    assert output_cache(out) is cache and cache.get_seq_length() == 3
    k, v = cache.layers[0].keys, cache.layers[0].values
    layer = DynamicLayer()
    init_cache_layer(layer, k[..., :2, :], v[..., :2, :])
    assert layer.get_seq_length() == 2 and layer.keys.data_ptr() == k.data_ptr()  # a view, no copy


@pytest.mark.model
def test_chat_ids_and_gguf_tokenizer(tokenizer):
    ids = chat_ids(tokenizer, [{"role": "user", "content": "Hi"}])
    assert isinstance(ids, torch.Tensor) and ids.dim() == 2 and ids[0, 0].item() == 1  # <|im_start|>
    text = "Hello world , ok . café ☕\n    x"
    enc = tokenizer(text)["input_ids"]
    assert enc == tokenizer(text, add_special_tokens=False)["input_ids"]  # the GGUF adds no BOS
    assert tokenizer.decode(enc) == text and tokenizer.eos_token == "<|im_end|>"


@pytest.mark.model
def test_export_round_trip(smollm, tmp_path):
    from tokenloom import generate
    from tokenloom.integrations.hf.chat import chat_input_ids
    from tokenloom.integrations.hf.export import PROBE_TEXT, export_hf
    from tokenloom.integrations.hf.models import load

    model, tok = smollm
    out = export_hf(tmp_path / "hf")
    assert json.loads((out / "tokenizer_config.json").read_text())["tokenizer_class"] == TOKENIZER_CLASS
    model2, tok2 = load(out)
    assert tok2(PROBE_TEXT)["input_ids"] == tok(PROBE_TEXT)["input_ids"]
    assert tok2.decode(tok2(PROBE_TEXT)["input_ids"]) == PROBE_TEXT
    ids = chat_input_ids(tok, "Name three colors.")
    assert torch.equal(chat_input_ids(tok2, "Name three colors."), ids)
    a = generate(model, ids, max_new_tokens=12).sequences
    b = generate(model2, ids, max_new_tokens=12).sequences
    assert torch.equal(a, b)
