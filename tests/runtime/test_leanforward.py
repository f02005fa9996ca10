"""The lean step forward: the model's own logits and cache bit for bit where it runs, and
transformers' forward everywhere else (hooks, subclasses, other attention, grad, training,
a causal input without a mask)."""

import copy

import pytest

from tokenloom.runtime.compat import cache_arg
from tokenloom.runtime.gqa import grouped_attention
from tokenloom.runtime.leanforward import lean_enabled, lean_logits, lean_supported, set_lean_forward, step_logits
from tokenloom.runtime.treeattn import batch_tree_inputs, tree_attention_mask

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _prefilled(model, prompt):
    import torch
    from transformers import DynamicCache

    cache = DynamicCache()
    with torch.no_grad():
        model(input_ids=prompt, use_cache=True, **cache_arg(model, cache))
    return cache


def _copy(cache):
    from transformers import DynamicCache

    from tokenloom.runtime.kvcache import cache_length

    twin = DynamicCache()
    for i, layer in enumerate(cache.layers):
        twin.update(layer.keys.clone(), layer.values.clone(), i)
    assert cache_length(twin) == cache_length(cache)
    return twin


def _both(model, cache, ids, pos, mask):
    """(lean logits, model logits), each from its own copy of ``cache``, and the two caches."""
    import torch

    mine, theirs = _copy(cache), _copy(cache)
    with torch.no_grad(), grouped_attention():
        assert lean_supported(model, mine, mask, int(ids.shape[1]))
        got = lean_logits(model, ids, pos, mask, mine)
        ref = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **cache_arg(model, theirs)).logits
    return got, ref, mine, theirs


def _assert_same(got, ref, mine, theirs):
    import torch

    assert got.dtype == ref.dtype and got.shape == ref.shape
    assert torch.equal(got, ref)
    for a, b in zip(mine.layers, theirs.layers):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)


@pytest.mark.parametrize("dtype,pack", [
    ("float32", False), ("float32", True), ("float32", "tiles"), ("float32", "tiles-trees"), ("float32", "tiles-packed"),
    ("bfloat16", False), ("bfloat16", "tiles"), ("bfloat16", "tiles-trees"),
])
def test_one_token_and_a_tree_equal_the_model(tiny_llama, dtype, pack):
    """As loaded and with each swapped linear (whose ``step`` the lean forward calls), the
    model's own forward through the same linears."""
    import torch

    from tokenloom.runtime.cpupack import packed_linears

    model = tiny_llama.to(getattr(torch, dtype))
    try:
        with packed_linears(model, pack):
            _one_token_and_a_tree(model)
    finally:
        tiny_llama.to(torch.float32)


def _one_token_and_a_tree(model):
    import torch

    prompt = torch.randint(3, 4000, (1, 23), generator=torch.Generator().manual_seed(1))
    cache = _prefilled(model, prompt)
    # one token, no mask: the model's own decode step
    _assert_same(*_both(model, cache, torch.tensor([[77]]), torch.tensor([[23]]), None))
    # a tree of 6 nodes (two branches) under its 4D mask
    parents = [-1, 0, 0, 1, 2, 4]
    depths = torch.tensor([0, 1, 1, 2, 2, 3])
    ids = torch.tensor([[5, 90, 91, 300, 301, 7]])
    mask = tree_attention_mask(parents, 23, model.dtype)
    _assert_same(*_both(model, cache, ids, (depths + 23).view(1, -1), mask))


def test_a_batch_of_trees_equals_the_model(tiny_llama):
    import torch

    prompt = torch.randint(3, 4000, (3, 9), generator=torch.Generator().manual_seed(2))
    cache = _prefilled(tiny_llama, prompt)
    trees = [([-1, 0, 0], [0, 1, 1]), ([-1], [0]), ([-1, 0, 1, 1], [0, 1, 2, 2])]
    tokens = [torch.tensor([11, 12, 13][: len(p)] + [14] * max(0, len(p) - 3)) for p, _ in trees]
    ids, mask, pos = batch_tree_inputs(
        tokens, [p for p, _ in trees], [d for _, d in trees], [0, 2, 1], [9, 9, 9], 9, torch.float32, "cpu"
    )
    _assert_same(*_both(tiny_llama, cache, ids, pos, mask))


def test_the_embedded_model_step_equals_its_forward(smollm):
    import torch

    model, _ = smollm
    prompt = torch.randint(3, 40000, (1, 40), generator=torch.Generator().manual_seed(3))
    cache = _prefilled(model, prompt)
    _assert_same(*_both(model, cache, torch.tensor([[1010]]), torch.tensor([[40]]), None))
    parents = [-1, 0, 1, 0]
    mask = tree_attention_mask(parents, 40, model.dtype)
    _assert_same(*_both(model, cache, torch.tensor([[9, 8, 7, 6]]), torch.tensor([[40, 41, 42, 41]]), mask))


def test_where_it_does_not_apply_the_model_runs(tiny_llama):
    import torch
    from transformers import DynamicCache, LlamaForCausalLM

    prompt = torch.tensor([[5, 6, 7, 8]])
    cache = _prefilled(tiny_llama, prompt)
    one, pos = torch.tensor([[9]]), torch.tensor([[4]])
    with torch.no_grad():
        assert lean_supported(tiny_llama, cache, None, 1)
        # a causal input of several tokens without a mask: transformers builds the mask
        assert not lean_supported(tiny_llama, cache, None, 3)
        # a 2D mask: transformers turns it into 4D
        assert not lean_supported(tiny_llama, cache, torch.ones(1, 5), 1)
        # not transformers' DynamicCache
        assert not lean_supported(tiny_llama, object(), None, 1)
        assert not lean_supported(object(), cache, None, 1)
        # switched off
        set_lean_forward(False)
        try:
            assert not lean_enabled() and not lean_supported(tiny_llama, cache, None, 1)
        finally:
            set_lean_forward(True)
        # training mode
        tiny_llama.train()
        try:
            assert not lean_supported(tiny_llama, cache, None, 1)
        finally:
            tiny_llama.eval()
    # gradients on
    with torch.enable_grad():
        assert not lean_supported(tiny_llama, cache, None, 1)

    # a forward hook on a layer it would bypass: the model runs, so the hook fires
    calls = []
    handle = tiny_llama.model.layers[1].mlp.register_forward_hook(lambda *a: calls.append(1))
    try:
        with torch.no_grad():
            assert not lean_supported(tiny_llama, cache, None, 1)
            hooked = step_logits(tiny_llama, _copy(cache), one, pos, None)
    finally:
        handle.remove()
    assert calls == [1]
    with torch.no_grad():
        lean = step_logits(tiny_llama, _copy(cache), one, pos, None)
    assert calls == [1] and torch.equal(hooked, lean)

    # a hook on a linear (which the lean forward may call through its step): the model runs
    handle = tiny_llama.model.layers[0].self_attn.k_proj.register_forward_pre_hook(lambda *a: calls.append(2))
    try:
        with torch.no_grad():
            assert not lean_supported(tiny_llama, cache, None, 1)
            step_logits(tiny_llama, _copy(cache), one, pos, None)
    finally:
        handle.remove()
    assert calls == [1, 2]

    # a subclass may change the layer: not lean
    class Custom(LlamaForCausalLM):
        pass

    custom = Custom(copy.deepcopy(tiny_llama.config)).eval()
    with torch.no_grad():
        assert not lean_supported(custom, DynamicCache(), None, 1)

    # another attention implementation
    eager = LlamaForCausalLM._from_config(copy.deepcopy(tiny_llama.config), attn_implementation="eager").eval()
    assert tiny_llama.config._attn_implementation == "sdpa"  # the shared fixture is untouched
    with torch.no_grad():
        assert not lean_supported(eager, DynamicCache(), None, 1)


def test_the_switch_takes_bools_only():
    with pytest.raises(TypeError, match="enabled"):
        set_lean_forward("no")  # type: ignore[arg-type]
    assert lean_enabled()


def test_swapped_linears_run_their_step(tiny_llama, monkeypatch):
    """Inside a packing block the lean forward calls each swapped linear's ``step`` (the checks
    made once per step), not its module call; on an accelerator input it would call the module."""
    import torch

    from tokenloom.runtime import cpupack
    from tokenloom.runtime.cpupack import packed_linears

    steps, calls = [], []
    with packed_linears(tiny_llama, True):
        kind = type(tiny_llama.model.layers[0].self_attn.q_proj)
        real_step, real_forward = kind.step, kind.forward
        monkeypatch.setattr(kind, "step", lambda self, x: (steps.append(1), real_step(self, x))[1])
        monkeypatch.setattr(kind, "forward", lambda self, x: (calls.append(1), real_forward(self, x))[1])
        cache = _prefilled(tiny_llama, torch.tensor([[5, 6, 7]]))
        calls.clear()
        steps.clear()
        with torch.no_grad():
            step_logits(tiny_llama, cache, torch.tensor([[9]]), torch.tensor([[3]]), None)
    assert kind in cpupack._STEP_TYPES
    assert len(steps) == 2 * 7 + 1 and not calls  # 7 linears per layer and the head


@pytest.mark.parametrize("pack", ["tiles", "tiles-trees"])
def test_sibling_tiles_run_as_one_call(tiny_llama, monkeypatch, pack):
    """With tiles, q / k / v and gate / up run as one call each (cpupack.TILED_GROUPS): 4 calls
    per layer and the head, where each linear alone makes 7 per layer; the logits are the
    same bits either way. ``"tiles-trees"`` runs one row through torch (no group call)."""
    import torch

    from tokenloom.runtime import cpupack

    calls = []
    real = cpupack._tiles_call
    monkeypatch.setattr(cpupack, "_tiles_call", lambda *a: (calls.append(1), real(*a))[1])
    cache = _prefilled(tiny_llama, torch.tensor([[5, 6, 7]]))
    mask = tree_attention_mask([-1, 0, 0], 3, torch.float32)
    ids, pos = torch.tensor([[9, 10, 11]]), torch.tensor([[3, 4, 4]])
    got = {}
    try:
        for grouped in (False, True):
            cpupack.set_grouped(grouped)
            with torch.no_grad(), cpupack.packed_linears(tiny_llama, pack):
                calls.clear()
                got[grouped] = step_logits(tiny_llama, _copy(cache), ids, pos, mask)
                per_step = 2 * 4 + 1 if grouped else 2 * 7 + 1
                assert len(calls) == per_step
                calls.clear()
                step_logits(tiny_llama, _copy(cache), ids[:, :1], pos[:, :1], None)
                assert len(calls) == (0 if pack == "tiles-trees" else per_step)
    finally:
        cpupack.set_grouped(True)
    assert torch.equal(got[True], got[False])


def test_a_counting_hook_keeps_the_lean_forward_and_the_count(tiny_llama):
    """tokenloom's bench counts forwards with a pre-hook marked COUNTING_HOOK: the steps stay
    lean, and the hook's count plus the lean count is every forward of the model."""
    import torch

    import tokenloom
    from tokenloom.eval.specbench import count_forwards
    from tokenloom.runtime.leanforward import COUNTING_HOOK, lean_forwards

    cache = _prefilled(tiny_llama, torch.tensor([[5, 6, 7]]))
    handle, counter = count_forwards(tiny_llama)
    try:
        assert all(getattr(h, COUNTING_HOOK, False) for h in tiny_llama._forward_pre_hooks.values())
        with torch.no_grad():
            assert lean_supported(tiny_llama, cache, None, 1)
        before = lean_forwards(tiny_llama)
        counter.reset()
        out = tokenloom.generate(tiny_llama, torch.tensor([[5, 6, 7, 8]]), method="plain", max_new_tokens=6,
                                 eos_token_id=[], pack=False)
        assert out.sequences.shape[1] == 4 + 6
        assert lean_forwards(tiny_llama) - before == 5  # the prompt runs through the model, then 5 lean steps
        assert counter.value == 6 and counter.calls == 1
    finally:
        handle.remove()


def test_idle_output_capturing_hooks_keep_the_lean_forward():
    """transformers 5.x installs an output-capturing hook on every decoder layer and attention
    the first time a call asks for hidden states, and keeps it. Idle (no call capturing), it does
    nothing: the steps stay lean and equal the model's. While a call captures, it is a real hook."""
    import sys

    import torch

    from tokenloom.integrations.hf.models import make_tiny_llama

    model = make_tiny_llama(layers=1)  # its own model: the hooks stay for good
    prompt = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert len(model(input_ids=prompt, output_hidden_states=True).hidden_states) == 2
    cache = _prefilled(model, prompt)
    _assert_same(*_both(model, cache, torch.tensor([[9]]), torch.tensor([[4]]), None))
    capture = sys.modules.get("transformers.utils.output_capturing")
    if capture is None:  # transformers 4.x: no kept hooks
        return
    hooks = [h for m in model.modules() for h in m._forward_hooks.values()]
    assert hooks and all(h.__name__ == "output_capturing_hook" for h in hooks)
    token = capture._active_collector.set({"hidden_states": []})
    try:
        with torch.no_grad():
            assert not lean_supported(model, cache, None, 1)
    finally:
        capture._active_collector.reset(token)
    model.model.layers[0].register_forward_hook(lambda *a: None)  # any other hook: the model runs
    with torch.no_grad():
        assert not lean_supported(model, cache, None, 1)
