"""The package, the loop and the embedded model."""

from __future__ import annotations

import pytest
import torch

import tokenloom
from tokenloom import generate
from tokenloom.integrations.hf.chat import chat_input_ids

PROMPTS = [
    "What is the capital of France?",
    "Write a Python function that reverses a string.",
    "Give me three tips for sleeping better.",
]


def test_public_api():
    assert tokenloom.__version__ == "0.1.0"
    for name in tokenloom.__all__:
        assert hasattr(tokenloom, name), name
    assert "greedy" in tokenloom.methods()


@pytest.mark.model
@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_equals_hf_generate(smollm, prompt):
    model, tok = smollm
    ids = chat_input_ids(tok, prompt)
    ours = generate(model, ids, method="greedy", max_new_tokens=40)
    ref = model.generate(ids, max_new_tokens=40, do_sample=False, attention_mask=torch.ones_like(ids))
    assert ours.sequences.tolist() == ref.tolist()
    s = ours.stats
    assert s.new_tokens == ours.sequences.shape[1] - ids.shape[1]
    assert s.steps == s.new_tokens and s.mean_accepted == 1.0
    assert s.seconds > 0 and s.tokens_per_second > 0


@pytest.mark.model
def test_stop_tokens_come_from_generation_config(smollm):
    model, tok = smollm
    # The GGUF file's EOS is <|im_end|> (transformers 4.57's conversion reported <|im_start|>,
    # corrected by tokenloom.runtime.compat); a chat turn ends with <|im_end|>.
    assert tok.eos_token_id == 2
    assert tokenloom.models.stop_token_ids(model, tok) == [2]
    ids = chat_input_ids(tok, "Say hello.")
    out = generate(model, ids, max_new_tokens=200)
    assert out.sequences[0, -1].item() == 2
    assert out.stats.new_tokens < 200


def test_tiny_llama_greedy_equals_hf(tiny_llama):
    ids = torch.tensor([[1, 400, 500, 600, 700]])
    ours = generate(tiny_llama, ids, max_new_tokens=12, eos_token_id=[])
    ref = tiny_llama.generate(ids, max_new_tokens=12, do_sample=False, attention_mask=torch.ones_like(ids),
                              eos_token_id=None, pad_token_id=0)
    assert ours.sequences.tolist() == ref.tolist()


class _Recorder:
    def __init__(self):
        self.puts = []
        self.ended = False

    def put(self, x):
        self.puts.append(x.tolist())

    def end(self):
        self.ended = True


def test_streamer_receives_prompt_then_tokens(tiny_llama):
    ids = torch.tensor([[1, 2000, 3000]])
    rec = _Recorder()
    out = generate(tiny_llama, ids, max_new_tokens=5, eos_token_id=[], streamer=rec)
    assert rec.puts[0] == ids.tolist() and rec.ended
    streamed = [t for p in rec.puts[1:] for t in p[0]]
    assert streamed == out.sequences[0, 3:].tolist()


def test_eos_and_budget(tiny_llama):
    ids = torch.tensor([[1, 2000, 3000]])
    free = generate(tiny_llama, ids, max_new_tokens=6, eos_token_id=[])
    first = free.sequences[0, 3].item()
    stopped = generate(tiny_llama, ids, max_new_tokens=6, eos_token_id=first)
    assert stopped.sequences[0, 3:].tolist() == [first]
    assert generate(tiny_llama, ids, max_new_tokens=0).sequences.tolist() == ids.tolist()


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(input_ids=[[1, 2]]), TypeError, "torch.LongTensor"),
        (dict(input_ids=torch.tensor([[1.0, 2.0]])), ValueError, "int64"),
        (dict(input_ids=torch.ones(0, 3, dtype=torch.long)), ValueError, "B = 0"),
        (dict(input_ids=torch.ones(2, 3, 1, dtype=torch.long)), ValueError, r"shape \[B, n\]"),
        (dict(input_ids=torch.ones(1, 0, dtype=torch.long)), ValueError, "empty"),
        (dict(method="nope"), ValueError, "unknown method"),
        (dict(max_new_tokens=-1), ValueError, "max_new_tokens"),
        (dict(temperature=-1.0), ValueError, "temperature"),
        (dict(temperature=float("nan")), ValueError, "temperature"),
    ],
)
def test_generate_bad_input(tiny_llama, kwargs, exc, match):
    args = dict(input_ids=torch.tensor([[1, 2, 3]]))
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        generate(tiny_llama, args.pop("input_ids"), **args)


def test_model_path_errors(tmp_path):
    from tokenloom import models

    with pytest.raises(FileNotFoundError):
        models.load(tmp_path / "missing.gguf")
    (tmp_path / "x.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="gguf"):
        models.load(tmp_path / "x.bin")
    d = tmp_path / "model"
    d.mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        models.load(d)
    (d / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no weights: looked for"):
        models.load(d)
    (d / "model.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="no tokenizer: looked for tokenizer.json"):
        models.load(d)


def test_default_model_is_installed():
    path = tokenloom.models.default_model_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000


@pytest.mark.model
def test_cli_generate(capsys):
    from tokenloom.cli.main import main

    assert main(["generate", "Name a color.", "--method", "greedy", "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr().out
    assert "[tokenloom] method=greedy tokens=" in out and "tokens/s=" in out


def test_cli_bad_model_path(capsys):
    from tokenloom.cli.main import main

    assert main(["generate", "hi", "--model", "/nonexistent/model.gguf"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_import_needs_no_torch():
    """``import tokenloom`` and its torch-free kernels work where torch cannot be imported (the
    wheel test checks this in a fresh venv; this catches a module-level torch import in seconds)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'transformers'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import tokenloom\n"
        "r = tokenloom.verify_greedy([-1, 0, 1], [0, 5, 6], [5, 6, 7])\n"
        "assert r.tokens.tolist() == [5, 6, 7], r\n"
        "assert 'torch' not in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
