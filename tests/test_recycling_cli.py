"""tokenloom bench: question selection, the summary table, method resolution, parser."""

from __future__ import annotations

import math

import pytest

from tokenloom.cli.main import build_parser
from tokenloom.cli.bench import BENCH_METHODS, RunResult, _resolve, format_table, load_questions, summarise


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


def test_methods_are_extensible():
    assert {"greedy", "hf", "hf-pld", "recycling"} <= set(BENCH_METHODS)
    args = build_parser().parse_args(["bench", "-n", "1", "--methods", "greedy,recycling", "--json", "x.json"])
    assert args.n == 1 and args.max_new_tokens == 128 and callable(args.func) and args.pack == "auto"
    assert _resolve("hf", args) is BENCH_METHODS["hf"]
    assert callable(_resolve("greedy", args)) and callable(_resolve("dyspec-chain", args))
    with pytest.raises(ValueError, match="unknown bench method"):
        _resolve("nope", args)
    args = build_parser().parse_args(["bench", "--draft-layers", "20", "--budget", "12", "--pack", "off"])
    assert (args.draft_layers, args.budget, args.pack) == (20, 12, "off")
