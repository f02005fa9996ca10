"""Workloads of ``tokenloom bench`` beside Spec-Bench's first turns (:func:`build_workloads`):

* ``specbench`` — the first turn of ``n`` questions per Spec-Bench category;
* ``multiturn`` — Spec-Bench's mt_bench second turns (``n`` per category), with the model's own
  greedy first answer in the context (computed once, untimed, before the timed run);
* ``code-edit`` — HumanEval functions to rewrite with type hints and a docstring (``4 n``
  problems; ``data/humaneval``, MIT);
* ``repeat`` — the same prompts as the other chosen workloads again, later in the run: what a
  cross-request cache of earlier outputs is for.

Every item is ``{"question_id", "category", "workload", "ids"}`` (``ids``: LongTensor [1, n]);
categories are prefixed with the workload outside Spec-Bench (``multiturn/writing``,
``code-edit``, ``repeat/...``), so the tables give each its own rows and its own overall.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence

__all__ = ["CODE_EDIT_PROMPT", "WORKLOADS", "build_workloads", "check_workloads"]

#: Workload names, in run order (``repeat`` always last).
WORKLOADS = ("specbench", "multiturn", "code-edit", "repeat")
#: The code-editing instruction (the function's source follows).
CODE_EDIT_PROMPT = "Rewrite this Python function with type hints and a docstring. Reply with the code only.\n\n"


def check_workloads(workloads: Optional[Sequence[str]]) -> List[str]:
    """The workloads to run, in run order (None: ``["specbench"]``).

    Raises:
        ValueError: an unknown or repeated name, or ``repeat`` alone.
    """
    names = ["specbench"] if workloads is None else list(workloads)
    bad = [w for w in names if w not in WORKLOADS]
    if bad or not names or len(set(names)) != len(names):
        raise ValueError(f"workloads: expected distinct names among {list(WORKLOADS)}, got {names}")
    if names == ["repeat"]:
        raise ValueError("workloads: 'repeat' repeats the other workloads' prompts; name at least one other")
    return [w for w in WORKLOADS if w in names]


def _chat(tok: Any, messages: List[Dict[str, str]]) -> Any:
    return tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")


def build_workloads(
    workloads: Sequence[str],
    n: int,
    tok: Any,
    first_turns: List[Dict[str, Any]],
    all_questions: List[Dict[str, Any]],
    first_answer: Callable[[Any], List[int]],
) -> List[Dict[str, Any]]:
    """The items of ``workloads`` (checked names) in run order.

    Args:
        workloads: names from :data:`WORKLOADS`.
        n: questions per category (code-edit: ``4 n`` problems).
        tok: the tokenizer (chat template).
        first_turns: the Spec-Bench questions of the ``specbench`` workload.
        all_questions: every Spec-Bench question (the multi-turn ones are taken from it).
        first_answer: ``first_answer(ids)`` -> the model's greedy answer ids (multi-turn).
    """
    from tokenloom.integrations.hf.chat import chat_input_ids

    items: List[Dict[str, Any]] = []
    if "specbench" in workloads:
        for q in first_turns:
            items.append({"question_id": q["question_id"], "category": q["category"], "workload": "specbench",
                          "ids": chat_input_ids(tok, q["turns"][0])})
    if "multiturn" in workloads:
        two = [q for q in all_questions if len(q["turns"]) > 1]
        per: Dict[str, int] = {}
        for q in two:
            if per.get(q["category"], 0) >= n:
                continue
            per[q["category"]] = per.get(q["category"], 0) + 1
            answer = tok.decode(first_answer(chat_input_ids(tok, q["turns"][0])), skip_special_tokens=True)
            msgs = [{"role": "user", "content": q["turns"][0]}, {"role": "assistant", "content": answer},
                    {"role": "user", "content": q["turns"][1]}]
            items.append({"question_id": q["question_id"], "category": "multiturn/" + q["category"],
                          "workload": "multiturn", "ids": _chat(tok, msgs)})
    if "code-edit" in workloads:
        from tokenloom.eval.fim import load_humaneval

        for i, p in enumerate(load_humaneval()[: 4 * n]):
            src = p["prompt"] + p["canonical_solution"]
            items.append({"question_id": i, "category": "code-edit", "workload": "code-edit",
                          "ids": chat_input_ids(tok, CODE_EDIT_PROMPT + "```python\n" + src + "```")})
    if "repeat" in workloads:
        items += [dict(it, category="repeat/" + it["category"].split("/")[-1], workload="repeat") for it in list(items)]
    return items
