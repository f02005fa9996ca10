"""``tokenloom._moved``: the one mechanism behind every moved module's old name (the request
types' ``tokenloom.decoding.config`` / ``.sink`` / ``.stats``, the chain drafters'
``tokenloom.integrations.vllm.chains``, the merged drafter's ``tokenloom.spec.suffix.drafter`` /
``.method`` / ``.calibration``)."""

from __future__ import annotations

import importlib
import sys
import warnings

import pytest

from tokenloom._moved import MovedModule, install_moved


@pytest.mark.parametrize(
    "old, new, name",
    [
        ("tokenloom.decoding.config", "tokenloom.request.config", "DecodeConfig"),
        ("tokenloom.decoding.sink", "tokenloom.request.sink", "TokenSink"),
        ("tokenloom.decoding.stats", "tokenloom.request.stats", "GenerateStats"),
        ("tokenloom.integrations.vllm.chains", "tokenloom.spec.chains", "register_chain_drafter"),
        ("tokenloom.spec.suffix.drafter", "tokenloom.spec.merged.drafter", "MergedDrafter"),
        ("tokenloom.spec.topk", "tokenloom.sampling.topk", "top_k_ids"),
    ],
)
def test_old_names_warn_and_give_the_new_objects(old, new, name):
    mod = importlib.import_module(old)
    assert isinstance(mod, MovedModule)
    with pytest.warns(DeprecationWarning, match=f"{old} moved to {new}; import {name} from there"):
        assert getattr(mod, name) is getattr(importlib.import_module(new), name)
    with pytest.raises(AttributeError), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        getattr(mod, "no_such_name")


def test_star_import_and_dunders():
    ns: dict = {}
    with pytest.warns(DeprecationWarning):
        exec("from tokenloom.integrations.vllm.chains import *", ns)
    assert "RecyclingChains" in ns and "make_chain_drafter" in ns
    mod = importlib.import_module("tokenloom.spec.suffix.method")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # dunders other than __all__ never warn
        assert not hasattr(mod, "__path__")


def test_install_moved_keeps_a_real_module():
    install_moved("tokenloom.spec", {"base": "tokenloom.spec.chains"})  # already imported: left alone
    assert not isinstance(sys.modules["tokenloom.spec.base"], MovedModule)
    install_moved("tokenloom.spec", {"no_such_old_name": "tokenloom.spec.chains"})
    try:
        with pytest.warns(DeprecationWarning):
            assert importlib.import_module("tokenloom.spec.no_such_old_name").CHAIN_DRAFTERS
    finally:
        del sys.modules["tokenloom.spec.no_such_old_name"]
