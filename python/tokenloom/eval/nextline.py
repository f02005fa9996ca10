"""Next-line code completion on HumanEval (164 problems, MIT; bundled with its license): a
small exact-match task the embedded 135M model solves part of the time, used to measure
cautious decoding's accuracy and the cascades' cost-quality curves.

Each problem gives one task: a seeded random non-blank line of the canonical solution; the
prompt is the problem's prompt plus the solution lines before it, *without* the last newline
(a byte-level BPE merges a newline with the next line's indentation, so a prompt ending in a
newline would end mid-token); the target is the next line (indentation included). The
completion is the generated text after its first newline, up to the next newline; it is correct
when it equals the target after stripping trailing whitespace (a generation that does not
start with a newline continued the previous line and is wrong).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, List, Sequence, Tuple

from tokenloom.eval.fim import load_humaneval

__all__ = ["LineTask", "completion", "exact_match", "line_tokens", "make_line_tasks", "wilson"]


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
        text = p["prompt"] + "".join(line + "\n" for line in lines[:i])
        out.append(LineTask(p["task_id"], text[:-1] if text.endswith("\n") else text, lines[i]))
    return out


def completion(text: str) -> str:
    """The generated line: ``text`` after its leading newline, up to the next one (``""`` when
    ``text`` does not start with a newline)."""
    if not text.startswith("\n"):
        return ""
    return text[1:].split("\n", 1)[0]


def line_tokens(tokenizer: Any, new_ids: Sequence[int]) -> int:
    """How many of the generated tokens ``new_ids`` it takes to finish the completed line (all of
    them when the line never ends)."""
    for k in range(1, len(new_ids) + 1):
        text = tokenizer.decode(list(new_ids[:k]))
        if text.startswith("\n") and "\n" in text[1:]:
            return k
    return len(new_ids)


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
