"""vLLM: tokenloom's chain drafters as a ``custom_class`` speculative proposer
(:mod:`.proposer`; chain drafters over token histories in :mod:`.chains`).

Serve with ``speculative_config={"method": "custom_class", "model":
"tokenloom.integrations.vllm.Proposer", "num_speculative_tokens": 5}``. Importing this package
(or tokenloom) never imports vLLM or torch; the names below load their module on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

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
    "CHAIN_DRAFTERS": "chains",
    "MergedChains": "chains",
    "RecyclingChains": "chains",
    "chain_drafters": "chains",
    "make_chain_drafter": "chains",
    "register_chain_drafter": "chains",
    "Proposer": "proposer",
    "MergedProposer": "proposer",
    "RecyclingProposer": "proposer",
    "SuffixProposer": "proposer",
    "SUPPORTED_VLLM": "proposer",
    "check_vllm_version": "proposer",
    "proposer_class": "proposer",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
