"""Bench additions of the merged-drafter work: workload names and items (multi-turn with the
model's first answer, code editing, the repeated pass), budgeted peers with their own state, the
SAM-style switch and the arctic wrapper (when installed) equal to HF greedy."""

from __future__ import annotations

import numpy as np
import pytest

import tokenloom
from tokenloom.eval.peers import SamSwitchDrafter, arctic_available, best_chain, peer_method
from tokenloom.eval.specbench import BenchConfig, _all_questions, check_config, load_questions
from tokenloom.eval.workloads import CODE_EDIT_PROMPT, build_workloads, check_workloads
from tokenloom.spec.recycling.recycler import TokenRecycler
from tokenloom.spec.suffix.store import SuffixCache

from tests.reference.greedy import hf_greedy
from tests.reference.spec import prompt_ids

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class FakeTok:
    """Chat template = the joined contents; ids = their lengths (enough to check the layout)."""

    chat_template = "x"

    def __init__(self):
        self.chats = []

    def apply_chat_template(self, messages, add_generation_prompt=True, return_tensors="pt"):
        import torch

        self.chats.append(messages)
        return torch.tensor([[len(m["content"]) % 1000 for m in messages]])

    def decode(self, ids, skip_special_tokens=True):
        return "ANSWER:" + ",".join(map(str, ids))


def test_check_workloads():
    assert check_workloads(None) == ["specbench"]
    assert check_workloads(["repeat", "code-edit", "specbench"]) == ["specbench", "code-edit", "repeat"]
    for bad in (["nope"], [], ["repeat"], ["specbench", "specbench"]):
        with pytest.raises(ValueError, match="workloads"):
            check_workloads(bad)
    with pytest.raises(ValueError, match="workloads"):
        check_config(BenchConfig(methods=["hf"], workloads=["x"]))


def test_build_workloads_layout():
    tok = FakeTok()
    answers = []

    def first_answer(ids):
        answers.append(ids)
        return [7, 8]

    items = build_workloads(check_workloads(["specbench", "multiturn", "code-edit", "repeat"]), 1, tok,
                            load_questions(1, ["coding", "writing"]), _all_questions(), first_answer)
    spec = [it for it in items if it["workload"] == "specbench"]
    multi = [it for it in items if it["workload"] == "multiturn"]
    code = [it for it in items if it["workload"] == "code-edit"]
    rep = [it for it in items if it["workload"] == "repeat"]
    assert [it["category"] for it in spec] == ["coding", "writing"]
    assert len(multi) == 8 and all(it["category"].startswith("multiturn/") for it in multi)
    assert len(answers) == 8  # one greedy first answer per multi-turn question
    chat = next(m for m in tok.chats if len(m) == 3)
    assert [m["role"] for m in chat] == ["user", "assistant", "user"] and chat[1]["content"] == "ANSWER:7,8"
    assert len(code) == 4 and all(c["content"].startswith(CODE_EDIT_PROMPT) for c in tok.chats[-4:] for c in c[:1])
    assert len(rep) == len(spec) + len(multi) + len(code) and items[-len(rep):] == rep
    assert all(r["ids"] is o["ids"] for r, o in zip(rep, spec + multi + code))


def test_peer_names():
    assert peer_method("hf") is None and peer_method("merged") is None
    assert callable(peer_method("merged-16")) and callable(peer_method("recycling-auto"))
    with pytest.raises(ValueError, match="fixed budget"):
        peer_method("sam-auto")
    with pytest.raises(ValueError, match="nested"):
        peer_method("recycling-7")
    if not arctic_available():
        with pytest.raises(ValueError, match="arctic-inference"):
            peer_method("arctic-16")


def test_best_chain():
    toks = np.array([5, 6, 7, 8]); parents = np.array([-1, -1, 0, 0]); probs = np.array([0.6, 0.4, 0.3, 0.7])
    assert best_chain(toks, parents, probs, 5) == [5, 8]
    assert best_chain(toks, parents, probs, 1) == [5]
    assert best_chain(toks[:0], parents[:0], probs[:0], 3) == []


def test_sam_switch_equals_hf_greedy(tiny_llama):
    from tokenloom.decoding.methods import method_scope, methods, speculative_method
    from tokenloom.eval.peers import make_sam_drafter

    # visible inside the scope only: the library's method table is left as it was
    rec, cache = TokenRecycler(49152, 8), SuffixCache(max_bytes=1 << 20)
    base = prompt_ids(3, n=6)[0].tolist()
    import torch

    for ids in (prompt_ids(60), torch.tensor([base * 3])):
        ref = hf_greedy(tiny_llama, ids, 24)
        with method_scope({"test-sam": speculative_method(make_sam_drafter)}):
            out = tokenloom.generate(tiny_llama, ids, method="test-sam", max_new_tokens=24, eos_token_id=[],
                                     recycler=rec, cache=cache, budget=8)
        assert out.sequences.tolist() == ref.tolist()
    assert "test-sam" not in methods()
    assert isinstance(make_sam_drafter(None, None, None, recycler=rec, cache=None), SamSwitchDrafter)


@pytest.mark.skipif(not arctic_available(), reason="arctic-inference not installed (scripts/install_arctic_suffix.sh)")
def test_arctic_equals_hf_greedy(tiny_llama):
    fn = peer_method("arctic-8")
    for seed in range(2):
        ids = prompt_ids(80 + seed)
        ref = hf_greedy(tiny_llama, ids, 20)
        new, _ = fn(tiny_llama, ids, 20, [])
        assert new == ref[0, ids.shape[1]:].tolist()
