"""vLLM harness: the same prompts through vLLM without speculation and with each speculative
method (tokenloom's ``custom_class`` proposer, vLLM's ``ngram`` and ``suffix``), greedy, at
several batch sizes; token ids per prompt, throughput, acceptance and the proposer's own time.

Run it inside a venv that has vLLM (``scripts/install_vllm_cpu.sh``) under an
``if __name__ == "__main__":`` guard (vLLM spawns processes), e.g. ``python
benches/experiments/vllm_compare.py``. One engine per method (the speculative method is fixed at engine
start); within an engine the batch sizes run one after the other. Acceptance comes from vLLM's
own counters: ``mean_acceptance_length = 1 + accepted / drafts`` (vLLM's definition, over steps
that had a draft) and ``tokens_per_step = generated / (generated - accepted)`` (every step of a
request emits exactly one token the target chose itself, so this counts steps without a draft
too; the last step's tokens cut by ``max_tokens`` make it a slight underestimate).

Nothing here imports vLLM until a run starts.
"""

from __future__ import annotations

import gc
import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from tokenloom.eval.specbench import load_questions

__all__ = [
    "CPU_ENV",
    "METHODS",
    "REPETITIVE_PROMPTS",
    "MethodRun",
    "prompt_ids",
    "run_method",
    "speculative_config",
]

#: Environment vLLM's CPU build needs (set when absent): KV-cache GiB, no thread pinning on a
#: shared machine.
CPU_ENV = {"VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}

#: Method names: ``none`` (no speculation), ``tokenloom`` (the proposer with its default drafter,
#: top-k update), ``tokenloom-accepted`` (the proposer updating from committed tokens only),
#: ``tokenloom-recycling`` / ``tokenloom-suffix`` / ``tokenloom-merged`` (the proposer with that
#: chain drafter, top-k update where it has one), vLLM's ``ngram`` and ``suffix``.
METHODS = ("none", "tokenloom", "tokenloom-accepted", "tokenloom-recycling", "tokenloom-suffix", "tokenloom-merged",
           "ngram", "suffix")
#: The chain drafter of each ``tokenloom-<drafter>`` method.
_DRAFTER_METHODS = {"tokenloom-recycling": "recycling", "tokenloom-suffix": "suffix", "tokenloom-merged": "merged"}

_LOREM = (
    "def moving_average(values, window):\n"
    "    result = []\n"
    "    for i in range(len(values) - window + 1):\n"
    "        chunk = values[i : i + window]\n"
    "        result.append(sum(chunk) / window)\n"
    "    return result\n"
)

#: A repetitive workload: answers that copy or lightly edit text from the prompt.
REPETITIVE_PROMPTS = (
    "Repeat the following code exactly, without any comment:\n\n" + _LOREM,
    "Rename the function to `rolling_mean` and the argument `values` to `xs` in this code, "
    "and print the whole code:\n\n" + _LOREM,
    "Copy this list exactly, one item per line: apples, bananas, cherries, dates, elderberries, "
    "figs, grapes, honeydew melons, kiwis, lemons, mangoes, nectarines, oranges, papayas.",
    "Write the sentence 'The quick brown fox jumps over the lazy dog.' five times, one per line.",
)


def speculative_config(method: str, num_tokens: int = 5) -> Optional[Dict[str, Any]]:
    """vLLM's ``speculative_config`` for ``method`` (None for ``none``).

    Raises:
        ValueError: an unknown method (the message lists them).
    """
    if method == "none":
        return None
    if method in ("tokenloom", "tokenloom-accepted") or method in _DRAFTER_METHODS:
        return {
            "method": "custom_class",
            "model": "tokenloom.integrations.vllm.proposer.Proposer",
            "num_speculative_tokens": num_tokens,
        }
    if method == "ngram":
        return {"method": "ngram", "num_speculative_tokens": num_tokens, "prompt_lookup_max": 4, "prompt_lookup_min": 2}
    if method == "suffix":
        return {"method": "suffix", "num_speculative_tokens": num_tokens}
    raise ValueError(f"unknown method {method!r}; expected one of {list(METHODS)}")


def prompt_ids(tokenizer: Any, n_per_category: int, repetitive: bool = True) -> List[Dict[str, Any]]:
    """``[{"name", "ids"}]``: the first turn of ``n_per_category`` Spec-Bench questions per
    category, then (``repetitive``) :data:`REPETITIVE_PROMPTS`, chat-templated to token ids."""
    from tokenloom.integrations.hf.chat import chat_input_ids

    items = [(f"specbench/{q['category']}/{q['question_id']}", q["turns"][0]) for q in load_questions(n_per_category)]
    if repetitive:
        items += [(f"repetitive/{i}", p) for i, p in enumerate(REPETITIVE_PROMPTS)]
    return [{"name": name, "ids": [int(t) for t in chat_input_ids(tokenizer, text)[0].tolist()]} for name, text in items]


@dataclass
class MethodRun:
    """One method on every prompt at every batch size (results keyed by batch size as str)."""

    method: str
    tokens: Dict[str, List[List[int]]] = field(default_factory=dict)
    seconds: Dict[str, float] = field(default_factory=dict)
    generated: Dict[str, int] = field(default_factory=dict)
    acceptance: Dict[str, Dict[str, float]] = field(default_factory=dict)
    proposer: Dict[str, Any] = field(default_factory=dict)
    init_seconds: float = 0.0
    load: Dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> Dict[str, Any]:
        return dict(self.__dict__)


def _counters(llm: Any) -> Dict[str, float]:
    out: Dict[str, float] = {}
    for m in llm.get_metrics():
        value = getattr(m, "value", None)
        if isinstance(value, (int, float)):
            out[m.name] = float(value)
    return out


def _acceptance(before: Dict[str, float], after: Dict[str, float]) -> Dict[str, float]:
    def d(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    drafts, drafted = d("vllm:spec_decode_num_drafts"), d("vllm:spec_decode_num_draft_tokens")
    accepted, generated = d("vllm:spec_decode_num_accepted_tokens"), d("vllm:generation_tokens")
    return {
        "drafts": drafts,
        "draft_tokens": drafted,
        "accepted_tokens": accepted,
        "generated_tokens": generated,
        "mean_acceptance_length": 1.0 + accepted / drafts if drafts else 1.0,
        "tokens_per_step": generated / (generated - accepted) if generated > accepted else 1.0,
    }


def _uptime() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:  # pragma: no cover - not Linux
        return "?"


def run_method(
    method: str,
    model_dir: str,
    prompts: Sequence[Dict[str, Any]],
    *,
    batch_sizes: Sequence[int] = (1, 8),
    max_tokens: int = 64,
    num_tokens: int = 5,
    max_model_len: int = 2048,
    in_process: bool = True,
) -> MethodRun:
    """Run ``prompts`` through one vLLM engine with ``method``, greedy, fp32, at each batch size.

    Args:
        method: one of :data:`METHODS`.
        model_dir: an HF directory (e.g. from :func:`tokenloom.integrations.hf.export.export_hf`).
        prompts: ``[{"name", "ids"}]`` (:func:`prompt_ids`).
        batch_sizes: prompts per ``generate`` call (all at once; a batch of 8 runs 8 requests
            together).
        max_tokens: new tokens per prompt. num_tokens: speculative tokens per step.
        in_process: run vLLM's engine in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``),
            so tokenloom's proposer statistics are read directly (per batch size: the steps and
            the proposer's seconds of that batch).

    Returns:
        :class:`MethodRun` with the token ids per prompt, wall seconds, vLLM's acceptance
        counters and (tokenloom) the proposer's statistics, per batch size.
    """
    for k, v in CPU_ENV.items():
        os.environ.setdefault(k, v)
    if in_process:
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    spec = speculative_config(method, num_tokens)
    saved = {k: os.environ.get(k) for k in ("TOKENLOOM_VLLM_UPDATE", "TOKENLOOM_VLLM_DRAFTER")}
    if method.startswith("tokenloom"):
        os.environ["TOKENLOOM_VLLM_UPDATE"] = "accepted" if method == "tokenloom-accepted" else "topk"
        if method in _DRAFTER_METHODS:
            os.environ["TOKENLOOM_VLLM_DRAFTER"] = _DRAFTER_METHODS[method]
    try:
        return _run(method, spec, model_dir, prompts, batch_sizes, max_tokens, max_model_len)
    finally:  # the next run in this process sees the caller's settings
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _run(
    method: str,
    spec: Optional[Dict[str, Any]],
    model_dir: str,
    prompts: Sequence[Dict[str, Any]],
    batch_sizes: Sequence[int],
    max_tokens: int,
    max_model_len: int,
) -> MethodRun:
    from vllm import LLM, SamplingParams

    from tokenloom.integrations.vllm.proposer import live_proposers

    run = MethodRun(method)
    run.load["start"] = _uptime()
    start = time.perf_counter()
    llm = LLM(
        model=model_dir,
        dtype="float32",
        max_model_len=max_model_len,
        max_num_seqs=max(batch_sizes),
        speculative_config=spec,
        enforce_eager=True,
        disable_log_stats=False,
        seed=0,
    )
    run.init_seconds = time.perf_counter() - start
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=False)
    try:
        llm.generate([{"prompt_token_ids": prompts[0]["ids"]}], SamplingParams(temperature=0.0, max_tokens=4), use_tqdm=False)
        for b in batch_sizes:
            before = _counters(llm)
            p_before = [p.stats() for p in live_proposers()]
            out_tokens: List[List[int]] = []
            t0 = time.perf_counter()
            for i in range(0, len(prompts), b):
                group = [{"prompt_token_ids": p["ids"]} for p in prompts[i : i + b]]
                outs = llm.generate(group, params, use_tqdm=False)
                out_tokens += [list(o.outputs[0].token_ids) for o in outs]
            key = str(b)
            run.seconds[key] = time.perf_counter() - t0
            run.tokens[key] = out_tokens
            run.generated[key] = sum(len(t) for t in out_tokens)
            run.acceptance[key] = _acceptance(before, _counters(llm))
            run.load[f"batch{b}"] = _uptime()
            p_after = [p.stats() for p in live_proposers()]
            if p_after and len(p_after) == len(p_before):
                steps = sum(a["steps"] - b["steps"] for a, b in zip(p_after, p_before))
                secs = sum(a["propose_seconds"] - b["propose_seconds"] for a, b in zip(p_after, p_before))
                cap = sum(a["topk_capture_seconds"] - b["topk_capture_seconds"] for a, b in zip(p_after, p_before))
                run.proposer[key] = {
                    "steps": steps,
                    "propose_seconds": secs,
                    "seconds_per_step": secs / steps if steps else 0.0,
                    "topk_capture_seconds_per_step": cap / steps if steps else 0.0,
                    "cumulative": p_after[-1],
                }
    finally:
        del llm
        gc.collect()
    return run
