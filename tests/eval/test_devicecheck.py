"""The device check (``scripts/device_check.sh``, ``tokenloom.eval.devicecheck``) in CI: its quick
CPU run (what ``--device cpu`` runs, on one torch thread; about a minute here with the embedded
model already loaded) passes on the embedded model and the tiny Llama and reports every
section; the script refuses a device this machine does not have."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "device_check.sh"

torch = pytest.importorskip("torch")
pytest.importorskip("scipy")


@pytest.fixture
def fresh_states():
    """The check warms the in-process drafter states and the step-cost calibration of the shared
    embedded model: leave them as other tests expect them."""
    from tokenloom.spec.recycling.recycler import reset_default_recyclers
    from tokenloom.spec.sizing import clear_step_cost_cache
    from tokenloom.spec.suffix.store import reset_default_suffix_caches

    yield
    reset_default_recyclers()
    reset_default_suffix_caches()
    clear_step_cost_cache()


@pytest.mark.model
def test_quick_cpu_check_passes(smollm, tmp_path, fresh_states, one_torch_thread):
    from tokenloom.eval.devicecheck import QUICK, format_table, run_checks, write_report
    from tokenloom.eval.devicecheck import checked_methods as dc_checked

    report = run_checks(torch.device("cpu"), QUICK, embedded=smollm)  # what --device cpu runs
    assert report["failures"] == [], report["failures"]
    from tokenloom.decoding.methods import ALIASES, BUILTIN

    methods = set(BUILTIN) | set(ALIASES)  # tokenloom's own: a method another test registered is not checked
    assert set(dc_checked()) == methods
    assert {r["method"] for r in report["greedy"]} == methods
    assert {r["model"] for r in report["greedy"]} == {"SmolLM2-135M", "tiny Llama"}
    assert {r["method"] for r in report["chi_square"]} == methods - {"cautious", "greedy"}
    assert {r["mode"] for r in report["bytelm"]} == {"all covers", "canonical"}
    assert {r["method"] for r in report["speed"]} == (methods - {"greedy"}) | {"hf", "hf-pld"}
    assert all(r["tokens_per_s"] > 0 for r in report["speed"])
    assert report["tree_steps"]["tokens"][0] == 1 and report["tree_steps"]["tokens"][-1] == 81
    assert report["peak_memory"]["bytes"] > 0
    md = write_report(report, str(tmp_path / "out" / "check.json"))
    assert json.loads((tmp_path / "out" / "check.json").read_text())["failures"] == []
    table = pathlib.Path(md).read_text()
    assert table == format_table(report) + "\n" and "PASS" in table and "| recycling |" in table


def test_script_refuses_an_absent_device():
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    env = {**os.environ, "PYTHON": sys.executable}  # the interpreter running the tests (a CI venv)
    run = subprocess.run([str(SCRIPT), "--device", "cuda"], capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 2
    assert "--device cuda: no cuda device on this machine" in run.stderr and "--device cpu" in run.stderr


def test_failures_exit_non_zero_loudly(monkeypatch, tmp_path, capsys):
    import tokenloom.eval.devicecheck as dc

    fake = {
        "machine": {"device": "cpu", "device_name": "cpu", "cpu": "x", "torch": "t", "transformers": "t",
                    "tokenloom": "t", "forced_accelerator_path": False},
        "quick": True, "settings": {}, "section_seconds": {"load": 1.0},
        "greedy": [{"model": "m", "prompt": 0, "method": "plain", "status": "MISMATCH", "first_diff": 3, "gap": 0.5}],
        "chi_square": [], "bytelm": [], "speed": [], "tree_steps": {"tokens": [], "seconds": []},
        "peak_memory": {"kind": "host peak RSS", "bytes": 1}, "seconds": 1.0,
        "failures": ["greedy: plain on m, prompt 0: differs from HF at token 3"],
    }
    monkeypatch.setattr(dc, "run_checks", lambda device, s: fake)
    assert dc.main(["--device", "cpu", "--out", str(tmp_path / "r.json")]) == 1
    err = capsys.readouterr().err
    assert "DEVICE CHECK FAILED" in err and "differs from HF at token 3" in err
