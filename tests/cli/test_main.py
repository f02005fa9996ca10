"""The command line a newcomer meets: every flag checked before the model loads (with the valid
choices in the error and in --help), warnings for flags that do nothing, raw bytes for the byte
commands, one-line model-loading errors, exit code 130 on Ctrl-C, quiet model loading, plots
checked up front, and ``generate --compare`` against its two named baselines."""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import tokenloom
from tokenloom.cli import common
from tokenloom.cli.main import build_parser, main

ROOT = Path(__file__).resolve().parents[2]
#: The folder holding the tokenloom this test imports (python/ in a checkout, site-packages when
#: the wheel is installed), for the subprocesses.
SRC = str(Path(tokenloom.__file__).resolve().parents[1])


@pytest.fixture
def no_model_load(monkeypatch):
    """Any model load fails the test: bad input must be refused before it."""
    from tokenloom.integrations.hf import models

    def no_load(*_a, **_k):
        raise AssertionError("the model must not load for bad arguments")

    monkeypatch.setattr(models, "load_or_default", no_load)


BAD = [
    (["generate", "hi", "--method", "foo"], "unknown method 'foo'; choose from: .*recycling"),
    (["generate", "hi", "--top-p", "1.5"], r"--top-p: expected a number in \(0, 1\]"),
    (["generate", "hi", "--top-p", "0"], r"--top-p"),
    (["generate", "hi", "--max-new-tokens", "-5"], "--max-new-tokens: expected an integer >= 1"),
    (["generate", "hi", "--temperature", "-1"], "--temperature"),
    (["generate", "hi", "--temperature", "nan"], "--temperature"),
    (["generate", "hi", "--top-k", "0"], "--top-k"),
    (["generate", "hi", "--min-p", "2"], "--min-p"),
    (["generate", "hi", "--seed", "-1"], "--seed"),
    (["generate", "hi", "--compare", "--repeat", "0"], "--repeat"),
    (["generate", "hi", "--compare", "--temperature", "0.7"], "--compare times greedy"),
    (["generate", "hi", "--compare", "--method", "plain"], "baseline itself"),
    (["bench", "--categories", "coding,mathh"], "unknown categories 'mathh'; choose from: coding, .*writing"),
    (["bench", "--categories", ","], "expected at least one"),
    (["bench", "--threads", "-1"], "--threads: expected an integer >= 1"),
    (["bench", "--methods", "hf,hf"], "once"),
    (["bench", "--methods", "hf,nope"], "unknown methods 'nope'; choose from: .*hf-pld"),
    (["bench", "-n", "0"], "-n: expected an integer >= 1"),
    (["bench", "--repeat", "0"], "--repeat"),
    (["bench", "--json", "/nonexistent-dir/x.json"], "does not exist"),
    (["bench", "--batch", "1,0"], "--batch: expected an integer >= 1"),
    (["bench", "--dtype", "float16"], "--dtype: unknown dtype .float16.; choose from: float32, bfloat16"),
    (["bench", "--batch", "4,4"], "each batch size once"),
    (["bench", "--batch", "4", "--methods", "hf"], "unknown method 'hf'"),
    (["bench", "--batch", "4", "--methods", "cautious"], "one request at a time"),
    (["bench", "--batch", "4", "--batch-budget", "-1"], "--batch-budget: expected an integer >= 0"),
    (["bench", "--batch", "4", "--batch-budget", "some"], "--batch-budget"),
    (["bytes", "fim", "--methods", "foo"], "unknown FIM methods 'foo'; choose from: token, heal, byte"),
    (["bytes", "fim", "-n", "-3"], "-n: expected an integer >= 0"),
    (["bytes", "fim", "-n", "0"], "fim needs >= 1"),
    (["bytes", "fim", "some text"], "fim takes no text"),
    (["bytes", "next", "x", "--top", "0"], "--top"),
    (["bytes", "next", "a\\q", "-e"], "bad escape"),
    (["frob"], "invalid choice"),
]


@pytest.mark.parametrize("argv,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_flags_fail_before_the_model_loads(argv, message, capsys, no_model_load):
    import re

    start = time.perf_counter()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tokenloom: error:") and len(err.splitlines()) == 1, err
    assert re.search(message, err), err
    assert time.perf_counter() - start < 30  # no model load (which the fixture also forbids)


def test_help_lists_choices_and_defaults(capsys):
    for argv, wanted in ((["generate", "--help"], ["recycling", "dyspec", "default 128", "--compare", "--verbose"]),
                         (["bench", "--help"], ["math_reasoning", "hf-pld", "--repeat", "default 2"]),
                         (["bytes", "--help"], ["token, heal, byte", "--escapes"])):
        with pytest.raises(SystemExit) as e:
            build_parser().parse_args(argv)
        assert e.value.code == 0
        out = " ".join(capsys.readouterr().out.split())
        for w in wanted:
            assert w in out, (argv, w)


def test_sampling_flags_at_temperature_zero_warn(capsys, no_model_load):
    assert main(["generate", "hi", "--top-p", "0.5", "--seed", "3"]) == 2  # the load is refused by the fixture
    err = capsys.readouterr().err.splitlines()
    assert "warning: --top-p, --seed do nothing at temperature 0" in err[0], "warned before the load"
    assert err[1].startswith("[tokenloom] loading")
    args = build_parser().parse_args(["generate", "hi", "--top-p", "0.5", "--temperature", "0.7"])
    assert common.warn_unused_sampling(args) == [] and capsys.readouterr().err == ""


def test_prefix_bytes_raw_and_escapes():
    raw = os.fsdecode(b"caf\xc3\xa9 \xff\xfe")  # what Python makes of non-UTF-8 argv bytes
    assert common.prefix_bytes(raw) == b"caf\xc3\xa9 \xff\xfe"
    assert common.prefix_bytes("a\\x41") == b"a\\x41", "no escapes unless asked"
    assert common.prefix_bytes(r"def f():\n\tx = '\xff\x00'\\", escapes=True) == b"def f():\n\tx = '\xff\x00'\\"
    for bad in ("\\x4", "\\xzz", "\\q", "end\\"):
        with pytest.raises(ValueError, match="bad escape"):
            common.prefix_bytes(bad, escapes=True)
    args = build_parser().parse_args(["bytes", "next", raw])
    assert common.prefix_bytes(args.text, args.escapes) == b"caf\xc3\xa9 \xff\xfe"


def test_plot_checks_matplotlib_up_front(monkeypatch, capsys, tmp_path, no_model_load):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    for argv in (["bench", "--plot", str(tmp_path / "x.png")], ["bytes", "fim", "--plot", str(tmp_path / "x.png")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "tokenloom[plot]" in err and "matplotlib" in err


def test_plot_extra_declared():
    text = (ROOT / "pyproject.toml").read_text()
    assert "plot = [" in text and "matplotlib" in text.split("plot = [", 1)[1].split("]", 1)[0]


def test_console_script_entry_point_is_callable():
    import importlib

    text = (ROOT / "pyproject.toml").read_text()
    line = next(x for x in text.splitlines() if x.startswith("tokenloom = "))
    module, attr = line.split("=", 1)[1].strip().strip('"').split(":")
    assert callable(getattr(importlib.import_module(module), attr))


@pytest.mark.parametrize(
    "files,missing",
    [([], "no config.json"), (["config.json"], "no weights: looked for"),
     (["config.json", "model.safetensors"], "no tokenizer: looked for tokenizer.json")],
)
def test_model_dir_errors_are_one_actionable_line(tmp_path, capsys, files, missing):
    for f in files:
        (tmp_path / f).write_text("{}")
    assert main(["generate", "hi", "--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0].startswith("[tokenloom] loading"), err  # announce + one error line
    assert err[1].startswith("tokenloom: error: cannot load the model") and missing in err[1] and str(tmp_path) in err[1]


def test_other_load_failures_are_one_line(monkeypatch, capsys):
    from tokenloom.integrations.hf import models

    def broken(*_a, **_k):
        raise ImportError("protobuf is required\nlong\ntraceback")

    monkeypatch.setattr(models, "load_or_default", broken)
    assert main(["generate", "hi"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "ImportError: protobuf is required (--verbose shows the traceback)" in err[1]


def test_ctrl_c_exits_130(monkeypatch, capsys):
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN under nohup, default_int_handler otherwise
    from tokenloom.cli import generate

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(generate, "run", interrupted)
    parser = build_parser()
    monkeypatch.setattr("tokenloom.cli.main.build_parser", lambda: parser)
    for action in parser._subparsers._group_actions[0].choices.values():  # noqa: SLF001 - test plumbing
        if action.prog.endswith("generate"):
            action.set_defaults(func=interrupted)
    assert main(["generate", "hi"]) == 130

    def wrapped(args):  # a library turning the interrupt into another error (transformers' lazy imports)
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        except KeyboardInterrupt:
            raise ImportError("requires the protobuf library") from None

    for action in parser._subparsers._group_actions[0].choices.values():  # noqa: SLF001
        if action.prog.endswith("generate"):
            action.set_defaults(func=wrapped)
    assert main(["generate", "hi"]) == 130
    assert "interrupted" in capsys.readouterr().err

    def swallowed(args):  # an availability check catching that ImportError: the command runs on
        try:
            wrapped(args)
        except ImportError:
            pass
        return 0

    for action in parser._subparsers._group_actions[0].choices.values():  # noqa: SLF001
        if action.prog.endswith("generate"):
            action.set_defaults(func=swallowed)
    assert main(["generate", "hi"]) == 130, "a swallowed Ctrl-C still ends the command with 130"
    assert "interrupted" in capsys.readouterr().err
    for action in parser._subparsers._group_actions[0].choices.values():  # noqa: SLF001
        if action.prog.endswith("generate"):
            action.set_defaults(func=lambda args: 0)
    assert main(["generate", "hi"]) == 0, "the next command starts uninterrupted"
    assert signal.getsignal(signal.SIGINT) is before, "the handler is restored"


def test_ctrl_c_while_loading_exits_130_quietly(tmp_path):
    """A real process interrupted while it imports and loads: exit 130, no traceback."""
    env = dict(os.environ, PYTHONPATH=SRC, TOKENLOOM_CACHE_DIR=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-m", "tokenloom", "generate", "hi"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    line = ""
    while time.time() < deadline and "loading" not in line:
        line = proc.stderr.readline()
    time.sleep(0.3)  # inside the loading (a second can outlast the whole command on a fast machine)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    # 130, or death by SIGINT (-2; a shell shows 130 too): CPython ends that way when the interrupt
    # hit a C extension's PyRun_String while it imported, even though main() caught it
    assert proc.returncode in (130, -signal.SIGINT), err[-3000:]
    assert "tokenloom: interrupted" in err, err[-3000:]
    assert "Traceback" not in err, err[-3000:]


def _stderr_of(code: str, tmp_path) -> str:
    env = dict(os.environ, PYTHONPATH=SRC, TOKENLOOM_CACHE_DIR=str(tmp_path))
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stderr


def test_tokenizer_loads_quietly(tmp_path):
    code = "from tokenloom.integrations.hf.models import load_tokenizer, default_model_path as p; load_tokenizer(p(), verbose={})"
    assert "legacy" not in _stderr_of(code.format(False), tmp_path)
    import transformers

    if int(transformers.__version__.split(".")[0]) < 5:  # transformers 5 no longer gives this warning
        assert "legacy" in _stderr_of(code.format(True), tmp_path), "--verbose restores transformers' warnings"


@pytest.mark.model
def test_model_loads_quietly(tmp_path):
    code = "from tokenloom.integrations.hf.models import load, default_model_path as p; load(p(), verbose={})"
    quiet = _stderr_of(code.format(False), tmp_path)
    assert quiet.strip() == "", quiet[-2000:]
    assert "de-quantizing" in _stderr_of(code.format(True), tmp_path)


def test_compare_names_baselines_and_checks_tokens(tiny_llama, tokenizer, capsys, _private_cache_dir):
    """--compare on a tiny model: the method and the named baselines, the same tokens as HF
    greedy, median and spread, the machine load, the fastest HF configuration named."""
    from tokenloom.cli.generate import compare
    from tokenloom.spec.recycling.recycler import reset_default_recyclers

    reset_default_recyclers()  # a recycler kept by an earlier test saves to that test's cache folder

    args = build_parser().parse_args(["generate", "Name three colors.", "--compare", "--repeat", "2", "--max-new-tokens", "12"])
    assert compare(args, tiny_llama, tokenizer, "recycling") == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "2 alternated run(s) per method; load average" in out
    for label in ("recycling", "HF greedy (model.generate)", "tokenloom greedy"):
        row = next(x for x in out.splitlines() if x.startswith(label))
        assert row.rstrip().endswith("yes"), row
    assert any(x.startswith("HF greedy, packed linears") for x in out.splitlines())
    assert any(x.startswith("HF prompt lookup") for x in out.splitlines())
    assert "x HF greedy" in out and "x tokenloom greedy (same tokens: yes)" in out
    assert re.search(r"x the fastest HF configuration here \((hf|hf-packed|hf-pld): HF ", out)
    assert "warm-up (untimed" in captured.err
    from tokenloom.spec import persist

    from tokenloom.spec.recycling.recycler import default_recycler

    persist.flush_all()
    # every timed run drafted from a fresh recycler of its own: no round saw another round's
    # answer, nothing was saved, and the process's own recycler was never written
    assert not list((_private_cache_dir / "state").glob("*-recycler-k8.bin"))
    assert not default_recycler(49152, model=tiny_llama).adjacency().any()


def test_load_line_warns_when_busy(monkeypatch):
    from tokenloom.cli.generate import load_line
    from tokenloom.eval import specbench

    monkeypatch.setattr(os, "getloadavg", lambda: (64.0, 10.0, 5.0))
    assert specbench.machine_load()["busy"] and "busy" in load_line()
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert not specbench.machine_load()["busy"] and "busy" not in load_line()


def test_subcommands_use_the_common_checks():
    """Every subcommand's numeric flags reject negatives while parsing (the shared types)."""
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices  # noqa: SLF001 - test plumbing
    for name, p in sub.items():
        for action in p._actions:  # noqa: SLF001
            if isinstance(action, argparse._StoreAction) and action.type is int:  # noqa: SLF001
                raise AssertionError(f"{name} {action.option_strings}: a bare int type; use tokenloom.cli.common.count")
