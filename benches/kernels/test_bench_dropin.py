"""Drop-in paths on the tiny random Llama (loop overhead, the model is nearly free): HF greedy
(anchor), tokenloom.generate(method="recycling"), custom_generate, HF assisted generation with
the recycling candidate generator, and the step API loop of examples/own_loop.py; 40 greedy
tokens, hot recycler. The embedded-model comparison is benches/experiments/dropin_compare.py."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

import tokenloom
import tokenloom.integrations.hf.custom_generate as tlhf
from tokenloom.spec.recycling.recycler import TokenRecycler

ROOT = pathlib.Path(__file__).resolve().parents[2]
N = 40


@pytest.fixture(scope="module")
def setup():
    import torch

    def load(name, path):
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    from tokenloom.integrations.hf.models import make_tiny_llama

    model = make_tiny_llama()
    mod = load("own_loop_example", ROOT / "examples" / "own_loop.py")
    ids = torch.randint(3, 49152, (1, 16), generator=torch.Generator().manual_seed(0))
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield model, ids, mod.own_loop
    torch.set_num_threads(old)


@pytest.mark.parametrize("path", ["hf_greedy", "tokenloom_generate", "custom_generate", "assisted", "step_api"])
def test_dropin_tiny(benchmark, setup, path):
    import torch

    model, ids, own_loop = setup
    benchmark.group = "dropin-tiny-llama-40-tokens"
    rec = TokenRecycler(49152)
    kw = dict(attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=N, eos_token_id=None, pad_token_id=0)
    runs = {
        "hf_greedy": lambda: model.generate(ids, **kw),
        "tokenloom_generate": lambda: tokenloom.generate(model, ids, method="recycling", max_new_tokens=N,
                                                         eos_token_id=[], recycler=rec, tree="2.2.2-16").sequences,
        "custom_generate": lambda: model.generate(ids, custom_generate=tlhf.recycling_generate, recycler=rec,
                                                  tree="2.2.2-16", **kw),
        "assisted": lambda: model.generate(ids, custom_generate=tlhf.recycling_assisted_generate, recycler=rec, **kw),
        "step_api": lambda: own_loop(model, ids, N, eos=-1, recycler=rec),
    }
    fn = runs[path]
    fn()  # warm the recycler (hot start)
    out = benchmark(fn)
    assert out.shape[1] == ids.shape[1] + N
