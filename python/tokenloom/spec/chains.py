"""The table of chain drafters (:class:`~tokenloom.spec.base.ChainDrafter`): drafters in chain
form over token histories, for serving stacks that verify chains (vLLM's ``custom_class``
proposer, :mod:`tokenloom.integrations.vllm.proposer`).

Each chain drafter lives with its algorithm: ``recycling``
(:class:`~tokenloom.spec.recycling.chains.RecyclingChains`), ``merged`` and ``suffix``
(:class:`~tokenloom.spec.merged.chains.MergedChains`: the best chain of the merged drafter over
the request's history, a bounded cross-request suffix cache and, ``merged``, Token Recycling's
matrix). :data:`CHAIN_DRAFTERS` maps a name to a factory
``factory(vocab_size, num_tokens, **options) -> ChainDrafter``; :func:`register_chain_drafter`
adds one explicitly, :func:`make_chain_drafter` builds one by name with a clear error.
"""

from __future__ import annotations

import inspect
import threading
from typing import Any, Callable, Dict, List, Optional

from tokenloom.spec.base import ChainDrafter
from tokenloom.spec.merged.chains import MergedChains, merged_chains, suffix_chains
from tokenloom.spec.recycling.chains import RecyclingChains

__all__ = [
    "CHAIN_DRAFTERS",
    "ChainDrafter",
    "ChainFactory",
    "MergedChains",
    "RecyclingChains",
    "chain_drafters",
    "make_chain_drafter",
    "register_chain_drafter",
]

ChainFactory = Callable[..., ChainDrafter]

#: name -> factory(vocab_size, num_tokens, **options).
CHAIN_DRAFTERS: Dict[str, ChainFactory] = {"recycling": RecyclingChains, "suffix": suffix_chains, "merged": merged_chains}
_LOCK = threading.Lock()


def _keyword_options(factory: Callable[..., Any]) -> Optional[List[str]]:
    """The keyword options ``factory`` accepts (None: any, it takes ``**options`` and checks
    them itself)."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]


def register_chain_drafter(name: str, factory: ChainFactory) -> None:
    """Make ``factory(vocab_size, num_tokens, **options) -> ChainDrafter`` available by ``name``
    (e.g. to the vLLM proposer's ``TOKENLOOM_VLLM_DRAFTER``).

    Raises:
        ValueError: an empty or non-string name. TypeError: ``factory`` is not callable.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name: expected a non-empty string, got {name!r}")
    if not callable(factory):
        raise TypeError(f"factory: expected a callable, got {type(factory).__name__}")
    with _LOCK:
        CHAIN_DRAFTERS[name] = factory


def chain_drafters() -> List[str]:
    """Registered chain drafter names."""
    with _LOCK:
        return sorted(CHAIN_DRAFTERS)


def make_chain_drafter(name: str, vocab_size: int, num_tokens: int, **options: Any) -> ChainDrafter:
    """Build the chain drafter registered as ``name``.

    Raises:
        ValueError: an unknown name (the message lists the known ones), an option the drafter
            does not take (the message lists those it takes), a bad option value.
    """
    with _LOCK:
        factory = CHAIN_DRAFTERS.get(name) if isinstance(name, str) else None
    if factory is None:
        raise ValueError(f"unknown chain drafter {name!r}; expected one of {chain_drafters()}")
    allowed = _keyword_options(factory)
    if allowed is not None:
        bad = sorted(set(options) - set(allowed))
        if bad:
            raise ValueError(f"chain drafter {name!r}: unknown options {bad}; expected some of {sorted(allowed)}")
    return factory(vocab_size, num_tokens, **options)
