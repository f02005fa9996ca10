"""``tokenloom calibrate`` on the tiny random Llama: flags checked before the model loads, the
report's text and JSON schema, and the choice it reports following the kernel rule (the rule's
inputs are whatever this machine measured; no timing is asserted)."""

from __future__ import annotations

import json

import pytest

from tokenloom.cli.main import main
from tokenloom.integrations.hf.models import make_tiny_llama
from tokenloom.spec import calibration as cal


@pytest.fixture
def tiny_loaded(monkeypatch):
    """``--model`` loads a fresh tiny Llama (no tokenizer needed)."""
    from tokenloom.integrations.hf import models

    tiny = lambda *_a, **_k: (make_tiny_llama(vocab_size=256, layers=1), None)  # noqa: E731
    monkeypatch.setattr(models, "load", tiny)  # load_or_default casts it to --dtype
    monkeypatch.setattr(models, "load_default", tiny)
    cal.clear_pack_choices()
    yield
    cal.clear_pack_choices()


@pytest.mark.parametrize("argv, error", [
    (["calibrate", "--dtype", "float16"], "unknown dtype 'float16'; choose from: float32, bfloat16"),
    (["calibrate", "--tokens", "0,5"], "distinct comma-separated integers >= 1"),
    (["calibrate", "--repeats", "0"], "expected an integer >= 1"),
])
def test_bad_flags_are_refused_before_loading(argv, error, capsys, monkeypatch):
    from tokenloom.integrations.hf import models

    def no_load(*_a, **_k):
        raise AssertionError("the model must not load for bad arguments")

    monkeypatch.setattr(models, "load_or_default", no_load)
    assert main(argv) == 2
    assert error in capsys.readouterr().err


FAST = ["--tokens", "1,17", "--repeats", "1", "--past-len", "8", "--no-progress"]


def test_float32_report_and_json(tiny_loaded, tmp_path, capsys):
    path = tmp_path / "cal.json"
    assert main(["calibrate", *FAST, "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "machine: " in out and "ISA: " in out and "torch " in out and "step cost" in out and 'pack="auto": ' in out
    rep = json.loads(path.read_text())
    assert set(rep) >= {"machine", "load", "dtype", "settings", "curves", "pack", "auto", "model"}
    assert set(rep["machine"]) >= {"cpu", "flags", "cores", "torch", "torch_build", "threads"}
    assert rep["dtype"] == "float32" and rep["settings"] == {"tokens": [1, 17], "repeats": 1, "past_len": 8}
    # the measured kernels, plus the row-split one's own curve when auto chose it
    assert set(rep["curves"]) - {"unpacked", "packed", "tiles"} <= {rep["pack"]["kernel"]}
    assert {"unpacked", "packed", "tiles"} <= set(rep["curves"]) and rep["pack"]["kernel"] in rep["curves"]
    for kern, c in rep["curves"].items():
        assert c["tokens"] == [1, 17] and len(c["seconds"]) == 2 and c["seconds"][0] <= c["seconds"][1]
        assert c["saved"] == (not c["load"]["heavy"]) and f"  {kern}" in out
    p = rep["pack"]
    medians = {k: {int(t): s for t, s in v.items()} for k, v in p["seconds"].items()}
    assert (p["kernel"], p["reason"]) == cal.decide_kernel(medians)  # the reported choice follows the rule
    assert rep["auto"] == {"pack": p["kernel"] != "unpacked", "curve": p["kernel"]}
    assert p["reason"] in out
    # how prompts run in tiles, measured per weight shape (the tiny model: 3 shapes and the head)
    assert any(k.startswith("float32 ") for k in rep["long_rows"]) and all(isinstance(v, bool) for v in rep["long_rows"].values())
    assert "prompts (more rows than a tree) in tiles: " in out
    # which kernel the tiles linears run per dtype (AMX or a vector family), in the text and the JSON
    assert f"tiles kernels: bfloat16 {rep['machine']['tiles']['bfloat16']}, float32 {rep['machine']['tiles']['float32']}" in out


def test_bfloat16_has_onednn_only_where_it_runs_bfloat16(tiny_loaded, tmp_path, capsys):
    """bfloat16: the oneDNN kernels are timed only where oneDNN runs bfloat16 natively."""
    import torch

    from tokenloom.runtime.cpupack import pack_available

    base = {"unpacked", "tiles"} | ({"packed"} if pack_available(torch.bfloat16) else set())
    path = tmp_path / "cal.json"
    assert main(["calibrate", *FAST, "--dtype", "bfloat16", "--json", str(path)]) == 0
    rep = json.loads(path.read_text())
    p = rep["pack"]
    assert rep["dtype"] == "bfloat16" and set(rep["curves"]) - {p["kernel"]} <= base
    assert base <= set(rep["curves"])
    medians = {k: {int(t): s for t, s in v.items()} for k, v in p["seconds"].items()}
    from tokenloom.runtime.kernels import TREE_KERNELS, kernel_parts

    splits = {k for k in TREE_KERNELS if set(kernel_parts(k)) <= base}  # derived from their timed parts
    assert set(medians) == base | splits and (p["kernel"], p["reason"]) == cal.decide_kernel(medians)
    assert rep["auto"]["curve"] == p["kernel"]
    assert any(k.startswith("bfloat16 ") for k in rep["long_rows"])
