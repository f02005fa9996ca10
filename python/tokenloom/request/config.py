"""The request every decoding method receives: :class:`DecodeConfig`, validated once, up front
(before any model work), whatever the temperature or token budget."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, FrozenSet, Optional, Sequence, Union

import numpy as np

from tokenloom._arrays import as_count
from tokenloom.sampling.seeds import check_seed

__all__ = ["DecodeConfig", "make_config"]

#: Smallest temperature taken as sampling; anything positive below it is refused (the scaled
#: logits would overflow float64). Give 0 for greedy decoding.
MIN_TEMPERATURE = 1e-6


@dataclass(frozen=True)
class DecodeConfig:
    """What every method needs to know about the request.

    ``temperature == 0`` means greedy. The sampling transforms apply in the order
    temperature -> top-k -> top-p -> min-p (see :mod:`tokenloom.sampling.sampler`).
    """

    max_new_tokens: int
    eos_token_ids: FrozenSet[int]
    temperature: float = 0.0
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    min_p: Optional[float] = None
    seed: Optional[int] = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def _float(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v):
        raise ValueError(f"{name}: expected a finite number, got {v!r}")
    return float(v)


def make_config(
    *,
    max_new_tokens: Any,
    eos_token_ids: Union[int, Sequence[int], FrozenSet[int]],
    temperature: Any = 0.0,
    top_k: Any = None,
    top_p: Any = None,
    min_p: Any = None,
    seed: Any = None,
    vocab_size: Optional[int] = None,
) -> DecodeConfig:
    """A validated :class:`DecodeConfig`. Every value is checked whatever the temperature (a
    ``top_p=1.5`` at temperature 0 is an error, not silently ignored).

    Raises:
        ValueError: ``max_new_tokens`` not an int >= 0; ``temperature`` negative, not finite or
            in ``(0, MIN_TEMPERATURE)``; ``top_k`` not an int >= 1; ``top_p`` outside (0, 1];
            ``min_p`` outside [0, 1]; an EOS id that is not a non-negative int.
        IndexError: an EOS id >= ``vocab_size``.
        TypeError: ``seed`` not an int or None.
    """
    n = as_count(max_new_tokens, "max_new_tokens", 0)
    t = _float("temperature", temperature)
    if t < 0 or 0 < t < MIN_TEMPERATURE:
        raise ValueError(
            f"temperature: expected 0 (greedy) or a number >= {MIN_TEMPERATURE}, got {temperature!r}"
        )
    k = None if top_k is None else as_count(top_k, "top_k", 1)
    p = None if top_p is None else _float("top_p", top_p)
    if p is not None and not (0.0 < p <= 1.0):
        raise ValueError(f"top_p: expected a number in (0, 1], got {top_p!r}")
    m = None if min_p is None else _float("min_p", min_p)
    if m is not None and not (0.0 <= m <= 1.0):
        raise ValueError(f"min_p: expected a number in [0, 1], got {min_p!r}")
    seed = check_seed(seed)
    ids = [eos_token_ids] if isinstance(eos_token_ids, (int, np.integer)) else list(eos_token_ids)
    eos = []
    for e in ids:
        e = as_count(e, "eos_token_id", 0)
        if vocab_size is not None and e >= vocab_size:
            raise IndexError(f"eos_token_id: {e} is outside the model's vocabulary [0, {vocab_size})")
        eos.append(e)
    return DecodeConfig(
        max_new_tokens=n,
        eos_token_ids=frozenset(eos),
        temperature=t,
        top_k=k,
        top_p=p,
        min_p=m,
        seed=seed,
    )
