"""Plain autoregressive decoding (``method="plain"``, alias ``"greedy"``): one target forward per
token; the argmax at temperature 0, otherwise a draw from :class:`tokenloom.Sampler` with the
request's transforms."""

from __future__ import annotations

from typing import Any, Callable, Dict

from tokenloom.request.config import DecodeConfig
from tokenloom.request.sink import TokenSink
from tokenloom.runtime.compat import cache_arg
from tokenloom.runtime.gqa import grouped_attention
from tokenloom.runtime.leanforward import step_logits

__all__ = ["PlainDrafter", "decode_plain", "make_plain_drafter", "next_token_chooser"]


def next_token_chooser(cfg: DecodeConfig) -> Callable[[Any], int]:
    """A function ``logits [1, V] -> int``: argmax when greedy, else a seeded sampler."""
    if cfg.greedy:
        from tokenloom.sampling.topk import argmax_ids

        return lambda logits: int(argmax_ids(logits[0]))
    from tokenloom.sampling.sampler import Sampler

    sampler = Sampler(
        temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, min_p=cfg.min_p, seed=cfg.seed
    )
    return lambda logits: int(sampler(logits)[0])


def decode_plain(model: Any, input_ids: Any, cfg: DecodeConfig, sink: TokenSink) -> None:
    """One target forward per new token, with a dynamic KV cache."""
    import torch
    from transformers import DynamicCache

    choose = next_token_chooser(cfg)
    if sink.done:  # nothing to generate
        return
    cache = DynamicCache()
    logits = model(input_ids=input_ids, use_cache=True, logits_to_keep=1, **cache_arg(model, cache)).logits
    past = int(input_ids.shape[1])
    with grouped_attention():
        while True:
            token = choose(logits[:, -1, :].float())
            if sink.emit([token]):
                return
            step = torch.tensor([[token]], dtype=torch.long, device=input_ids.device)
            logits = step_logits(model, cache, step, torch.tensor([[past]], device=input_ids.device), None)
            past += 1


class PlainDrafter:
    """The drafter of plain decoding in a batch: every step verifies the root alone (one new
    token per row per forward: the argmax, or one draw from the row's distribution)."""

    name = "plain"
    prefill_positions = 1

    def prefill(self, input_ids: Any, first_token: int, cache: Any, logits: Any) -> None:
        """Nothing to learn from the prompt."""

    def propose(self, root: int, past_len: int) -> Any:
        """The one-node tree ``[root]``."""
        from tokenloom.spec.base import DraftTree

        return DraftTree.root_only(root)

    def accept(self, tree: Any, result: Any, logits: Any) -> None:
        """Nothing to learn from a step."""

    def stats(self) -> Dict[str, Any]:
        return {}


def make_plain_drafter(model: Any, cfg: DecodeConfig, next_seed: Callable[[], int]) -> PlainDrafter:
    """The factory of :class:`PlainDrafter` (``generate(method="plain")`` on a batch)."""
    return PlainDrafter()
