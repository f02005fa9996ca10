"""Where every decoding method hands its emitted tokens: :class:`TokenSink` applies the stop rules
(EOS, the token budget), feeds the streamer and counts target forwards."""

from __future__ import annotations

from typing import Any, Iterable, List

from tokenloom.request.config import DecodeConfig

__all__ = ["TokenSink"]


class TokenSink:
    """Collects emitted tokens, stops at EOS or ``max_new_tokens``, streams, counts steps.

    ``steps`` counts calls to :meth:`emit` (one per target forward that emitted tokens).
    """

    def __init__(self, cfg: DecodeConfig, streamer: Any = None):
        self.cfg = cfg
        self.streamer = streamer
        self.tokens: List[int] = []
        self.steps = 0
        self.done = cfg.max_new_tokens <= 0

    def emit(self, tokens: Iterable[int]) -> bool:
        """Record one step's tokens (truncated at EOS / the token budget). Returns ``done``."""
        self.steps += 1
        kept: List[int] = []
        for t in tokens:
            if self.done:
                break
            t = int(t)
            kept.append(t)
            self.tokens.append(t)
            if t in self.cfg.eos_token_ids or len(self.tokens) >= self.cfg.max_new_tokens:
                self.done = True
        if self.streamer is not None and kept:
            import torch

            self.streamer.put(torch.tensor([kept], dtype=torch.long))
        return self.done
