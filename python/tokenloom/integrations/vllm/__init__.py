"""vLLM: tokenloom's chain drafters as a ``custom_class`` speculative proposer (:mod:`.proposer`,
the adapter to vLLM's interface; the chain drafters over token histories and their table live
with their algorithms, :mod:`tokenloom.spec.chains`).

Serve with ``speculative_config={"method": "custom_class", "model":
"tokenloom.integrations.vllm.Proposer", "num_speculative_tokens": 5}``. Importing this package
(or tokenloom) never imports vLLM or torch; the names below load their module on first use.
``tokenloom.integrations.vllm.chains`` moved to :mod:`tokenloom.spec.chains`; the old module
name still imports, with a DeprecationWarning.
"""

from __future__ import annotations

import importlib
from typing import Any

from tokenloom._moved import install_moved

__all__ = [
    "CHAIN_DRAFTERS",
    "MergedChains",
    "MergedProposer",
    "Proposer",
    "RecyclingChains",
    "RecyclingProposer",
    "SUPPORTED_VLLM",
    "SuffixProposer",
    "chain_drafters",
    "check_vllm_version",
    "make_chain_drafter",
    "proposer_class",
    "register_chain_drafter",
]

_HOME = {
    "CHAIN_DRAFTERS": "tokenloom.spec.chains",
    "MergedChains": "tokenloom.spec.chains",
    "RecyclingChains": "tokenloom.spec.chains",
    "chain_drafters": "tokenloom.spec.chains",
    "make_chain_drafter": "tokenloom.spec.chains",
    "register_chain_drafter": "tokenloom.spec.chains",
    "Proposer": f"{__name__}.proposer",
    "MergedProposer": f"{__name__}.proposer",
    "RecyclingProposer": f"{__name__}.proposer",
    "SuffixProposer": f"{__name__}.proposer",
    "SUPPORTED_VLLM": f"{__name__}.proposer",
    "check_vllm_version": f"{__name__}.proposer",
    "proposer_class": f"{__name__}.proposer",
}

install_moved(__name__, {"chains": "tokenloom.spec.chains"})


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
