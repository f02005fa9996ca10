"""Exact byte-level probabilities from a token-level language model.

``ByteLM(model, tokenizer, canonical=True)`` turns a causal LM over tokens into a distribution
over byte strings (and an end-of-text symbol), exactly, by the Byte-Token Representation Lemma:
``P(prefix x) = sum over covers t of x of P(t)`` -- no beam, no pruning.

What is computed (both modes):

- The token process ``Q``: starting after the context ids (BOS), the next token is drawn from the
  model's softmax restricted to the *allowed* logits rows, renormalised:
  ``Q(v | t) = p(v | t) * m(t_prev, t_last, v) / sum_u p(u | t) * m(t_prev, t_last, u)``.
  Padding rows (logits width > tokenizer) and byte-less non-special tokens are never allowed;
  special/added tokens always are, and they all mean end-of-text.
- ``canonical=False`` (all covers): every byte token is allowed (``m = 1``).
- ``canonical=True`` (default): token ``v`` is allowed after ``[.., t_prev, t_last]`` only if the
  pair is valid for the tokenizer (``encode(bytes(t_last) + bytes(v)) == [t_last, v]``, decided
  from the BPE merge ranks), the pair before it stays valid now that ``v``'s first bytes are
  known to follow (the pre-tokenizer looks ahead: ``' ', ' '`` is valid before a letter, not
  before another space), and the first token only if it can start an encoding. So ``Q`` puts all its
  mass on pairwise-canonical token sequences, renormalising locally at each step (the semantics
  of ByteSampler's valid-covering sampler; Phan et al.'s canonical covers without the
  non-canonical leak).
- The byte distribution is the image of ``Q`` under decoding: ``P(x) = sum_{t in cover(x)} Q(t)``,
  ``P(b | x) = P(x b) / P(x)`` for the 256 bytes, and ``P(EOS | x)`` (index 256) is the mass of
  special tokens right after encodings that decode to exactly ``x``. The 257 values sum to 1.

Efficiency: the covers of the growing prefix are kept in a Rust tree of *exact paths* (token
sequences decoding to exactly ``x[:j]``; :mod:`.covers`); a path needs a model forward only once
its last token ends exactly at the current position. All such paths are scored in one batched
forward with a tree attention mask over a shared KV cache (:mod:`.slots`), filled up with
look-ahead rows (:mod:`.lookahead`). A prefix given at once (``logprob`` of a text, a new
prompt) is planned first: every exact path inside it that can still matter goes into the same
forward, so it costs one forward, not one per token level. Token-level distributions are cached by token prefix in a
bounded LRU cache (:mod:`.distcache`). Greedy generation expands a path lazily, only when its
(known) probability mass could change the argmax, so it costs about one forward per token
rather than per byte. Every forward is checked against a memory bound first (:mod:`.budget`).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Union

import numpy as np

from tokenloom.bytelevel.covers import CoverState
from tokenloom.bytelevel.engine import CoverEngine
from tokenloom.bytelevel.vocab import ByteVocab
from tokenloom.runtime.model import logits_width

__all__ = ["ByteLM", "EOS", "as_bytes"]

EOS = 256
BytesLike = Union[bytes, bytearray, memoryview]


def as_bytes(data: Any, name: str = "prefix") -> bytes:
    """``data`` as ``bytes``.

    Raises:
        TypeError: ``data`` is a str (with a hint to encode it) or not bytes-like.
    """
    if isinstance(data, str):
        raise TypeError(f"{name}: expected bytes, got str (encode it first, e.g. text.encode('utf-8'))")
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"{name}: expected bytes, got {type(data).__name__}")


class ByteLM:
    """Exact next-byte distributions, log-probabilities and byte-level generation.

    Args:
        model: a Hugging Face causal LM (eval mode) on one device: the CPU, or an accelerator
            where the distributions stay on the device and only byte masses per path (and a
            few token probabilities) cross to the host (:mod:`tokenloom.bytelevel.rows`). A
            float16 / bfloat16 model is accepted: its logits are converted to float32 before
            the softmax, so the distributions are those of its half-precision logits.
        tokenizer: its fast tokenizer.
        canonical: sum canonical covers only (default) or all covers (see the module docstring).
        vocab: a prebuilt ``ByteVocab`` (default: built from the tokenizer).
        context_ids: token ids every byte string follows (default: the ids the tokenizer puts
            before text, e.g. BOS; falling back to its BOS/EOS token).
        max_paths: refuse (ValueError) when more exact paths than this are live -- all-covers
            mode grows exponentially on long inputs; nothing is ever pruned silently.
        cache_size: token-level distributions kept (LRU, by token prefix; the ids of token
            prefixes are kept for at most 16 times as many prefixes, evicted with them).
        pack: run float32 (and, where oneDNN runs it natively, bfloat16) CPU linears through
            pre-packed oneDNN weights (:mod:`tokenloom.runtime.cpupack`; ``"auto"`` default, ``True``
            or ``False``); many-row forwards get much cheaper.
        lookahead: fill every batched forward up to this many rows with *look-ahead rows*: the
            heaviest straddling extensions (path + a token running past the prefix end), whose
            distributions the next bytes will need if they follow that token (0 = off). Exact:
            it only changes which forward computes a distribution. A forward of a few rows
            costs about as much as one row on CPU, so this saves most per-byte forwards on text.
        max_memory_bytes: refuse (:class:`~tokenloom.bytelevel.budget.MemoryBoundError`, a
            MemoryError and ValueError) any forward whose estimated memory -- KV slots,
            distributions and tree nodes held, plus the forward's KV, logits and attention
            scores -- would exceed this many bytes, before allocating it (None: a quarter of
            the machine's memory, at most 4 GiB; see :mod:`tokenloom.bytelevel.budget`).
            Look-ahead rows are left out first when only they do not fit.

    Raises:
        ValueError: the model's logits come back on another device than its parameters (at the
            first call), its logits width is smaller than the
            tokenizer, canonical mode is unavailable for this tokenizer, no context id can be
            found, or a bad lookahead / cache_size / max_memory_bytes.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        canonical: bool = True,
        *,
        vocab: Optional[ByteVocab] = None,
        context_ids: Optional[Sequence[int]] = None,
        max_paths: int = 4096,
        cache_size: int = 256,
        pack: Any = "auto",
        lookahead: int = 8,
        max_memory_bytes: Optional[int] = None,
    ) -> None:
        if isinstance(lookahead, bool) or not isinstance(lookahead, int) or lookahead < 0:
            raise ValueError(f"lookahead must be an int >= 0, got {lookahead!r}")
        width = logits_width(model)
        if vocab is None:
            if tokenizer is None:
                raise ValueError("pass a tokenizer or a ByteVocab")
            if len(tokenizer) > width:
                raise ValueError(
                    f"tokenizer has {len(tokenizer)} tokens but the model's logits width is {width}: "
                    "tokenizer and model do not match"
                )
            vocab = ByteVocab.from_tokenizer(tokenizer, vocab_size=width)
        if vocab.width != width:
            raise ValueError(f"ByteVocab width {vocab.width} != model logits width {width}: tokenizer and model do not match")
        if canonical and not vocab.canonical_ok:
            raise ValueError(f"canonical mode unavailable: {vocab.canonical_note}; use canonical=False")
        self.model = model
        self.tokenizer = tokenizer
        self.vocab = vocab
        self.canonical = bool(canonical)
        ctx = list(vocab.prefix_ids) if context_ids is None else [int(i) for i in context_ids]
        if not ctx and tokenizer is not None:
            for cand in (getattr(tokenizer, "bos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
                if cand is not None:
                    ctx = [int(cand)]
                    break
        if not ctx:
            raise ValueError("no context id: pass context_ids (e.g. [bos_id]) to condition the first token")
        for i in ctx:
            if not 0 <= i < width:
                raise IndexError(f"context_ids: {i} is out of range [0, {width})")
        self.context_ids = ctx
        self.max_paths = int(max_paths)
        self.special = np.flatnonzero(vocab.special)
        self.lookahead = lookahead
        self._engine = CoverEngine(
            model, tokenizer, vocab, self.canonical, ctx, self.max_paths, cache_size, pack, lookahead, max_memory_bytes
        )

    @property
    def max_memory_bytes(self) -> int:
        """The memory bound in bytes (see the ``max_memory_bytes`` argument)."""
        return self._engine.budget.limit

    @property
    def forwards(self) -> int:
        """Model forwards so far."""
        return self._engine.forwards

    @property
    def forward_rows(self) -> int:
        """Rows (tokens) fed in those forwards."""
        return self._engine.forward_rows

    @property
    def lookahead_rows(self) -> int:
        """Look-ahead rows among them."""
        return self._engine.lookahead_rows

    @property
    def lookahead_hits(self) -> int:
        """Look-ahead rows whose distribution a path used later."""
        return self._engine.lookahead_hits

    def memory_usage(self) -> Dict[str, int]:
        """Entries of every internal table and the estimated bytes held (keys in
        :meth:`tokenloom.bytelevel.engine.CoverEngine.memory_usage`); all 0 after :meth:`reset`."""
        return self._engine.memory_usage()

    def _sync(self, prefix: bytes) -> CoverState:
        """The cover state of ``prefix`` (incremental when it extends the current one)."""
        return self._engine.sync(prefix)

    def _ensure_expanded(self, st: CoverState) -> None:
        """Give every pending path of ``st`` its distribution."""
        self._engine.ensure_expanded(st)

    # ------------------------------------------------------------------ public API
    def next_byte_probs(self, prefix: BytesLike) -> np.ndarray:
        """P(next byte | prefix) for the 256 bytes, then end-of-text at index 256.

        Args:
            prefix (bytes): the byte prefix (may end inside a token or a UTF-8 character).

        Returns:
            np.ndarray[float64], shape [257], sums to 1.

        Raises:
            TypeError: prefix is not bytes. ValueError: the prefix has probability 0 (e.g. a
            byte no token contains) or too many live paths. MemoryBoundError (a ValueError):
            the work would pass ``max_memory_bytes``.
        """
        st = self._sync(as_bytes(prefix))
        return self._probs(st)

    def _probs(self, st: CoverState) -> np.ndarray:
        """P(. | st.prefix), float64 [257], every pending path expanded first."""
        self._ensure_expanded(st)
        m, _, _ = st.masses()
        total = m.sum()
        if not total > 0:
            raise ValueError(f"the prefix has probability 0 under the model ({'canonical' if self.canonical else 'all covers'})")
        return m / total

    def logprob(self, data: BytesLike) -> float:
        """log P(the text starts with ``data``) (natural log; 0.0 for b"").

        Args:
            data (bytes): a byte string.

        Returns:
            float: the log-probability, ``-inf`` when no cover has mass.

        Raises:
            TypeError: data is not bytes. ValueError: too many live paths (MemoryBoundError:
            past ``max_memory_bytes``).
        """
        data = as_bytes(data, "data")
        if not data:
            return 0.0
        st = self._sync(data)
        self._ensure_expanded(st)
        return st.logprob()

    def generate(
        self,
        prefix: BytesLike,
        max_bytes: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: Optional[int] = None,
        stop_at_eos: bool = True,
        stop_bytes: bytes = b"",
    ) -> bytes:
        """Generate up to ``max_bytes`` bytes after ``prefix``, one byte at a time.

        Args:
            prefix (bytes): the prompt bytes (may end mid-token).
            max_bytes (int): most bytes to generate.
            temperature (float): 0 = greedy (argmax byte, lazily exact); > 0 samples from
                P(b | x)^(1/temperature), renormalised.
            top_p (float): nucleus truncation of the byte distribution (1 = off).
            seed (int | None): seed of the sampler.
            stop_at_eos (bool): stop when end-of-text is chosen.
            stop_bytes (bytes): stop after generating any of these bytes (e.g. b"\\n").

        Returns:
            bytes: the generated continuation (without the prefix).

        Raises:
            TypeError: prefix is not bytes. ValueError: bad temperature/top_p/max_bytes, too
            many live paths (MemoryBoundError: past ``max_memory_bytes``).
        """
        prefix = as_bytes(prefix)
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        if temperature < 0 or not math.isfinite(temperature):
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        rng = np.random.default_rng(seed)
        st = self._sync(prefix)
        out = bytearray()
        for _ in range(max_bytes):
            b = self._engine.greedy_byte(st) if temperature == 0 else self._sample_byte(st, temperature, top_p, rng)
            if b == EOS:
                if stop_at_eos:
                    break
                continue
            out.append(b)
            st.push(b)
            if b in stop_bytes:
                break
        return bytes(out)

    def _sample_byte(self, st: CoverState, temperature: float, top_p: float, rng: np.random.Generator) -> int:
        """A byte (or EOS) drawn from P(. | prefix) ** (1 / temperature), renormalised and
        nucleus-truncated at ``top_p``."""
        p = self._probs(st)
        if temperature != 1.0:
            with np.errstate(divide="ignore"):
                lp = np.log(p) / temperature
            lp -= lp.max()
            p = np.exp(lp)
            p /= p.sum()
        if top_p < 1.0:
            order = np.argsort(-p, kind="stable")
            cum = np.cumsum(p[order])
            k = int(np.searchsorted(cum, top_p) + 1)
            keep = np.zeros_like(p)
            keep[order[:k]] = p[order[:k]]
            p = keep / keep.sum()
        return int(rng.choice(257, p=p))

    def reset(self) -> None:
        """Free everything this ByteLM holds: the cover state, the KV cache, the distribution
        cache with its token-prefix ids, and the look-ahead priors (the counters stay; the
        vocabulary's shared masks belong to the ``ByteVocab``)."""
        self._engine.reset()
