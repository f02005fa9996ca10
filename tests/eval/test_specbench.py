"""tokenloom bench (tokenloom.eval.specbench + the thin cli.bench): question selection, the
summary table, method resolution, argument checks before any model loads, parser."""

from __future__ import annotations

import math

import pytest

from tokenloom.cli.main import build_parser
import tokenloom
from tokenloom.cli.bench import config_from_args
from tokenloom.eval.specbench import (
    BENCH_METHODS,
    BenchConfig,
    MethodOptions,
    RunResult,
    bench_methods,
    categories,
    check_config,
    default_methods,
    format_table,
    load_questions,
    method_kwargs,
    resolve,
    summarise,
)


def test_questions_cover_every_category():
    qs = load_questions(4)
    cats = {q["category"] for q in qs}
    assert len(cats) == 13 and len(qs) == 52
    assert {q["category"] for q in qs[:13]} == cats  # round-robin: any 13-prefix covers all
    assert [q["question_id"] for q in load_questions(1, ["rag"])] == [load_questions(2, ["rag"])[0]["question_id"]]


def test_summary_ratios():
    rs = [
        RunResult(1, "a", "hf", 100, 10.0, 100),
        RunResult(1, "a", "recycling", 100, 5.0, 40, True),
        RunResult(2, "b", "hf", 50, 5.0, 50),
        RunResult(2, "b", "recycling", 50, 5.0, 25, False),
    ]
    t = summarise(rs, ["hf", "recycling"])
    assert t["a"]["recycling"]["speedup"] == pytest.approx(2.0)
    assert t["a"]["recycling"]["mat"] == pytest.approx(2.5)
    assert t["overall"]["recycling"]["tokens_per_s"] == pytest.approx(15.0)
    assert t["overall"]["recycling"]["speedup"] == pytest.approx(1.5)
    assert t["overall"]["recycling"]["same_as_hf"] == 0.5 and math.isnan(t["overall"]["hf"]["same_as_hf"])
    text = format_table(t)
    assert "== overall ==" in text and "1.50x" in text
    assert "anchor: hf (HF greedy as loaded)" in text and t["overall"]["recycling"]["vs_anchor"] == pytest.approx(1.5)


def test_the_fastest_hf_configuration_is_the_named_anchor():
    from tokenloom.eval.specbench import best_anchor, table_anchor

    rs = [
        RunResult(1, "a", "hf", 100, 10.0, 100),
        RunResult(1, "a", "hf-packed", 100, 8.0, 100),
        RunResult(1, "a", "hf-pld", 100, 5.0, 40),
        RunResult(1, "a", "merged", 100, 4.0, 30),
        RunResult(2, "b", "hf", 100, 10.0, 100),
        RunResult(2, "b", "hf-packed", 100, 8.0, 100),
        RunResult(2, "b", "hf-pld", 100, 10.0, 90),
        RunResult(2, "b", "merged", 100, 5.0, 30),
    ]
    t = summarise(rs, ["hf", "hf-packed", "hf-pld", "merged"])
    assert table_anchor(t) == "hf-pld"  # 200 tokens in 15 s beats 16 s (packed) and 20 s (as loaded)
    assert t["overall"]["merged"]["vs_anchor"] == pytest.approx(15.0 / 9.0)
    assert t["a"]["merged"]["vs_anchor"] == pytest.approx(5.0 / 4.0)  # the same anchor in every category
    assert t["overall"]["merged"]["speedup"] == pytest.approx(20.0 / 9.0)  # speedup stays over HF greedy as loaded
    assert "anchor: hf-pld (HF prompt lookup)" in format_table(t)
    assert best_anchor({"merged": 9.0}) is None and best_anchor({"hf": 1.0, "hf-packed": 2.0}) == "hf-packed"
    assert {"hf", "hf-packed", "hf-pld"} <= set(default_methods())


def test_methods_are_extensible():
    assert {"hf", "hf-pld", "hf-packed"} <= set(BENCH_METHODS)
    names = bench_methods()
    assert set(tokenloom.methods()) <= set(names) and {"dyspec-fixed", "dyspec-chain"} <= set(names)
    assert set(default_methods()) <= set(names) and "hf" in default_methods()
    args = build_parser().parse_args(["bench", "-n", "1", "--methods", "recycling,hf", "--json", "x.json"])
    assert args.n == 1 and args.max_new_tokens == 128 and callable(args.func) and args.pack == "auto"
    cfg = config_from_args(args)
    assert cfg.methods == ["recycling", "hf"] and cfg.json_path == "x.json" and cfg.options.pack == "auto"
    assert resolve("hf", cfg.options) is BENCH_METHODS["hf"]
    for name in tokenloom.methods():  # whatever generate() offers runs in the bench too
        assert callable(resolve(name, cfg.options))
    assert callable(resolve("dyspec-chain", cfg.options))
    with pytest.raises(ValueError, match="unknown bench method 'nope'.*hf-pld"):
        resolve("nope", cfg.options)
    args = build_parser().parse_args(["bench", "--draft-layers", "20", "--budget", "12", "--pack", "off"])
    opts = config_from_args(args).options
    assert (opts.draft_layers, opts.budget, opts.pack) == (20, 12, False)
    assert method_kwargs("dyspec", opts) == {"draft_layers": 20, "budget": 12, "pack": False}
    assert method_kwargs("recycling", MethodOptions(tree="2.2.2-16", budget=3)) == {"tree": "2.2.2-16", "persist": False}
    assert method_kwargs("recycling", MethodOptions(persist=None)) == {}, "--saved-state: the method's default"
    assert config_from_args(build_parser().parse_args(["bench", "--saved-state"])).options.persist is None


def test_bad_arguments_fail_before_the_model_loads(tmp_path):
    assert len(categories()) == 13 and "rag" in categories()
    with pytest.raises(ValueError, match=r"unknown \['nope'\].*'coding'"):
        load_questions(1, ["rag", "nope"])
    with pytest.raises(ValueError, match="expected >= 1"):
        load_questions(0)
    bad = [
        (dict(categories=["nope"]), "unknown"),
        (dict(n=0), "n: expected an int >= 1, got 0"),
        (dict(threads=0), "threads: expected an int >= 1, got 0"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(methods=["hf", "hf"]), "more than once"),
        (dict(methods=[]), "at least one"),
        (dict(methods=["hf", "nope"]), "unknown bench method"),
        (dict(options=MethodOptions(budget=0)), "budget"),
        (dict(dtype="float16"), "dtype: expected one of float32, bfloat16, got 'float16'"),
        (dict(warm=-1), "warm: expected an int >= 0, got -1"),
        (dict(warm=True), "warm: expected an int >= 0, got True"),
    ]
    for kw, msg in bad:
        with pytest.raises(ValueError, match=msg):
            check_config(BenchConfig(**kw))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_config(BenchConfig(json_path=str(tmp_path / "no" / "x.json")))
    assert list(check_config(BenchConfig(methods=["hf", "recycling"]))) == ["hf", "recycling"]


def test_cli_reports_bad_arguments_without_loading(capsys, monkeypatch):
    from tokenloom.cli.main import main
    from tokenloom.integrations.hf import models

    def no_load(*_a, **_k):
        raise AssertionError("the model must not load for bad arguments")

    monkeypatch.setattr(models, "load_or_default", no_load)
    for argv in (["bench", "--categories", "rag,nope"], ["bench", "--threads", "0"], ["bench", "-n", "0"], ["bench", "--warm", "-1"], ["bench", "--batch", "2", "--warm", "1"],
                 ["bytes", "fim", "--methods", "token,nope"], ["bytes", "fim", "-n", "0"]):
        assert main(argv) == 2, argv
        assert "tokenloom: error:" in capsys.readouterr().err


def test_round_spread_and_header():
    from tokenloom.eval.specbench import format_spread, header, plot_context, round_spread

    rs = []
    for rnd, (t_hf, t_rec) in enumerate([(10.0, 5.0), (10.0, 4.0), (10.0, 8.0)]):
        rs += [RunResult(1, "a", "hf", 100, t_hf, 100, None, {}, rnd), RunResult(1, "a", "recycling", 100, t_rec, 50, True, {}, rnd)]
    spread = round_spread(rs, ["hf", "recycling"])
    assert spread["recycling"]["rounds"] == 3
    assert spread["recycling"]["speedup_median"] == pytest.approx(2.0)
    assert (spread["recycling"]["speedup_min"], spread["recycling"]["speedup_max"]) == (pytest.approx(1.25), pytest.approx(2.5))
    assert spread["recycling"]["tps_median"] == pytest.approx(20.0)
    assert "over 3 rounds" in format_spread(spread) and "2.00x [1.25-2.50]" in format_spread(spread)
    meta = {"model": "m", "questions": 13, "n": 1, "max_new_tokens": 64, "torch_threads": 2, "repeat": 3,
            "load_before": {"load1": 5.0, "load5": 1.0, "load15": 1.0, "cpus": 2, "busy": True}}
    meta["cpu"] = {"cpu": "Some CPU", "flags": ["avx2"], "cores": 2, "torch_build": "2.15", "threads": 2}
    assert "machine: Some CPU (avx2), 2 cores, torch 2.15" in header(meta)
    text = header(meta)
    assert "load average 5.00" in text and "warning: the machine is busy" in text and "13 questions x 3 round(s)" in text
    meta["load_before"]["busy"] = False
    assert "warning" not in header(meta)
    ctx = plot_context(meta)
    assert all(x in ctx for x in ("m", "13 questions (n=1 per category)", "max 64 new tokens", "2 threads", "3 round(s)", "load 5.00"))


def test_bench_repeat_end_to_end(tiny_llama, tokenizer, monkeypatch, tmp_path, capsys):
    """Two rounds on a tiny model: every round in the results, the spread over rounds, the run
    context in the JSON and the plot, the header with the load on stderr."""
    import json

    from tokenloom.eval import specbench
    from tokenloom.integrations.hf import models

    asked = []
    monkeypatch.setattr(models, "load_or_default", lambda *a, **k: (asked.append(k.get("dtype")), (tiny_llama, tokenizer))[1])
    cfg = BenchConfig(methods=["hf", "recycling"], n=1, categories=["rag", "qa"], max_new_tokens=6, repeat=2,
                      json_path=str(tmp_path / "r.json"), plot_path=str(tmp_path / "r.png"), progress=False,
                      dtype="bfloat16")
    table, spread = specbench.run_bench_rounds(cfg)
    data = json.loads((tmp_path / "r.json").read_text())
    assert sorted({r["round"] for r in data["results"]}) == [0, 1] and len(data["results"]) == 2 * 2 * 2
    assert data["meta"]["repeat"] == 2 and "load_before" in data["meta"] and "load_after" in data["meta"]
    assert asked == ["bfloat16"] and data["meta"]["dtype"] == "bfloat16" and "(bfloat16)" in data["meta"]["model"]
    assert data["meta"]["rounds"]["recycling"]["rounds"] == 2 and spread["hf"]["speedup_median"] == pytest.approx(1.0)
    assert (tmp_path / "r.png").stat().st_size > 1000
    assert table["overall"]["recycling"]["same_as_hf"] == 1.0
    assert "[tokenloom] bench:" in capsys.readouterr().err


def test_bench_methods_keep_their_own_drafter_states(tiny_llama, tokenizer, monkeypatch):
    """Interleaved on the same question, no method drafts from the process-wide recycler another
    method just wrote: each has its own for the whole round, and a new round starts fresh."""
    from tokenloom.eval import specbench
    from tokenloom.integrations.hf import models
    from tokenloom.spec.recycling.recycler import default_recycler

    seen = []

    def probe(name):
        def fn(model, ids, n, eos):
            rec = default_recycler(49152, model=model, persist=False)
            seen.append((name, id(rec)))
            return [5] * n, {}
        return fn

    monkeypatch.setitem(specbench.BENCH_METHODS, "probe-a", probe("a"))
    monkeypatch.setitem(specbench.BENCH_METHODS, "probe-b", probe("b"))
    monkeypatch.setattr(models, "load_or_default", lambda *a, **k: (tiny_llama, tokenizer))
    outside = default_recycler(49152, model=tiny_llama, persist=False)
    cfg = BenchConfig(methods=["probe-a", "probe-b", "hf"], n=1, categories=["rag", "qa"], max_new_tokens=2, repeat=2,
                      progress=False, warm=1)
    specbench.run_bench_rounds(cfg)
    timed = seen[2:]  # after the warm-up
    # every round: each tokenloom method answers the 2 warm questions (one per category), then
    # the 2 measured ones; the HF anchors have nothing to learn and are not warmed
    per_round = [timed[:8], timed[8:]]
    assert len(timed) == 16
    for rnd in per_round:
        assert [name for name, _ in rnd[:4]] == ["a", "a", "b", "b"]
    for rnd in per_round:
        a = {r for name, r in rnd if name == "a"}
        b = {r for name, r in rnd if name == "b"}
        assert len(a) == 1 and len(b) == 1 and a != b, "one recycler per method for the whole round, warming included"
        assert id(outside) not in a | b
