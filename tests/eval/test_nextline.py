"""tokenloom.eval.nextline: task construction, the completion rule, line token counts, Wilson
intervals."""

from __future__ import annotations

import math

import pytest

from tokenloom.eval.nextline import completion, exact_match, line_tokens, make_line_tasks, wilson


def test_tasks_are_seeded_lines_of_the_solution():
    a, b = make_line_tasks(10, seed=3), make_line_tasks(10, seed=3)
    assert [t.target for t in a] == [t.target for t in b]
    from tokenloom.eval.fim import load_humaneval

    for t, p in zip(a, load_humaneval()):
        assert t.target.strip()
        # the prompt, its dropped newline and the target line are the problem's text, in order
        assert (p["prompt"] + p["canonical_solution"]).startswith(t.prompt + "\n" + t.target + "\n")
    with pytest.raises(ValueError):
        make_line_tasks(0)


def test_completion_rule():
    t = make_line_tasks(1)[0]
    assert exact_match("\n" + t.target + "  \nmore", t)
    assert not exact_match(t.target, t)  # did not start a new line
    assert completion("\n\n    x") == ""
    assert completion("abc") == ""


def test_line_tokens(tokenizer):
    ids = tokenizer.encode("\n    return x\n    y = 2", add_special_tokens=False)
    k = line_tokens(tokenizer, ids)
    assert tokenizer.decode(ids[:k]).startswith("\n    return x\n")
    assert "\n" not in tokenizer.decode(ids[: k - 1])[1:]
    assert line_tokens(tokenizer, ids[:2]) == 2


def test_wilson_interval():
    lo, hi = wilson(5, 10)
    assert lo < 0.5 < hi and lo == pytest.approx(0.2366, abs=1e-3) and hi == pytest.approx(0.7634, abs=1e-3)
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == 1.0
    assert wilson(0, 0) == (0.0, 1.0)
    assert not math.isnan(wilson(3, 7)[0])
