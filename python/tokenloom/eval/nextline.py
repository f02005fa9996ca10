"""Next-line code completion on HumanEval (164 problems, MIT; bundled with its license): a
small exact-match task the embedded 135M model solves part of the time, used to measure
cautious decoding's accuracy and the cascades' cost-quality curves.

Each problem gives one task: a seeded random non-blank line of the canonical solution; the
prompt is the problem's prompt plus the solution lines before it (ending with a newline), the
target is that whole line (indentation included). A completion is the generated text up to its
first newline; it is correct when it equals the target after stripping trailing whitespace.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import List, Tuple

from tokenloom.eval.fim import load_humaneval

__all__ = ["LineTask", "completion", "exact_match", "make_line_tasks", "wilson"]


@dataclass
class LineTask:
    task_id: str
    prompt: str
    target: str


def make_line_tasks(n: int, seed: int = 0) -> List[LineTask]:
    """One task per problem for the first ``n`` problems (1 <= n <= 164).

    Raises:
        ValueError: ``n`` out of range.
    """
    problems = load_humaneval()
    if not 1 <= n <= len(problems):
        raise ValueError(f"n: expected 1..{len(problems)} problems, got {n}")
    rng = random.Random(seed)
    out = []
    for p in problems[:n]:
        lines = p["canonical_solution"].split("\n")
        ok = [i for i, line in enumerate(lines) if line.strip()]
        i = rng.choice(ok)
        out.append(LineTask(p["task_id"], p["prompt"] + "".join(line + "\n" for line in lines[:i]), lines[i]))
    return out


def completion(text: str) -> str:
    """The generated line: ``text`` up to its first newline."""
    return text.split("\n", 1)[0]


def exact_match(text: str, task: LineTask) -> bool:
    """Whether the first generated line equals the target (trailing whitespace ignored)."""
    return completion(text).rstrip() == task.target.rstrip()


def wilson(k: int, n: int, z: float = 1.96) -> Tuple[float, float]:
    """The Wilson score interval of ``k`` successes in ``n`` trials (95% by default)."""
    if n <= 0:
        return (0.0, 1.0)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))
