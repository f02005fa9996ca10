"""The exact bytes of every token of a Hugging Face tokenizer, and the byte index built on them.

``ByteVocab.from_tokenizer(tok)`` handles

- byte-level BPE (GPT-2 byte<->unicode map; every one of the 256 bytes round-trips),
- SentencePiece-style vocabularies (metaspace ``"▁"`` -> space, ``<0xNN>`` byte fallback, so
  several ids can share one byte string),
- added/special tokens: they are never byte content, only end-of-text candidates,
- a logits width larger than the tokenizer (padding rows get no bytes and no probability),
- the ids the tokenizer puts before the text (BOS), kept as the context of every byte string.

For canonical mode it also extracts the BPE merge table and the base symbols of each token,
from which the Rust core decides pairwise canonicality (see ``tokenloom._core.ByteIndex``).
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from functools import cached_property, lru_cache
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from tokenloom import _core

__all__ = ["ByteVocab", "bytes_to_unicode"]

#: Allowed-next-token masks kept per ByteVocab (each one float32 [width]: ~200 KB at 49k).
MASK_CACHE_SIZE = 2048
# Masks after whitespace / apostrophe pairs, where the next token's first bytes matter (None: same
# as the plain mask).
CONTEXT_CACHE_SIZE = 1024
_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
_METASPACE = "\u2581"


@lru_cache(maxsize=1)
def bytes_to_unicode() -> Dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = list(bs)
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def _types(node: Any) -> List[Dict[str, Any]]:
    """Flattened list of the components of a (possibly Sequence) tokenizer JSON node."""
    if not node:
        return []
    if node.get("type") == "Sequence":
        out: List[Dict[str, Any]] = []
        for key in ("pretokenizers", "normalizers", "decoders", "processors"):
            for sub in node.get(key, []) or []:
                out.extend(_types(sub))
        return out
    return [node]


def _char_class(ch: str) -> int:
    import regex  # a transformers dependency; same Unicode classes as the tokenizer's regex

    if regex.match(r"\p{L}", ch):
        return 0
    if regex.match(r"\p{N}", ch):
        return 1
    if regex.match(r"\s", ch):
        return 2
    return 3


class ByteVocab:
    """Exact token bytes + byte index.

    Attributes:
        token_bytes: bytes of each token id (``b""`` for special tokens and byte-less tokens).
        special: bool array [V]: end-of-text candidates (added/special tokens).
        width: logits width (>= V).
        prefix_ids: ids the tokenizer puts before any text (BOS), possibly empty.
        kind: "byte_level", "sentencepiece" or "plain".
        canonical_ok: whether canonical mode is available (BPE merges + supported pre-tokenizer).
        index: the Rust ``ByteIndex``.
    """

    def __init__(
        self,
        token_bytes: Sequence[bytes],
        special: Sequence[bool],
        width: Optional[int] = None,
        *,
        base: Optional[List[List[int]]] = None,
        merges: Optional[np.ndarray] = None,
        pretok: str = "none",
        char_classes: Optional[Dict[int, int]] = None,
        prefix_ids: Sequence[int] = (),
        kind: str = "plain",
        canonical_note: str = "",
    ) -> None:
        if isinstance(token_bytes, (bytes, str)):
            raise TypeError("token_bytes: expected a sequence of bytes objects, one per token")
        for i, b in enumerate(token_bytes):
            if not isinstance(b, bytes):
                raise TypeError(f"token_bytes[{i}]: expected bytes, got {type(b).__name__}")
        if len(token_bytes) == 0:
            raise ValueError("empty vocabulary: at least one token is needed")
        self.token_bytes: List[bytes] = list(token_bytes)
        # (prev token, canonical) -> additive allowed-next-token mask (see next_token_bias)
        self._mask_cache: "OrderedDict[Tuple[int, bool], Any]" = OrderedDict()
        self._context_cache: "OrderedDict[Tuple[int, int], Any]" = OrderedDict()
        self.special = np.ascontiguousarray(np.asarray(special, dtype=bool))
        if self.special.shape != (len(self.token_bytes),):
            raise ValueError(f"special: expected shape ({len(self.token_bytes)},), got {self.special.shape}")
        self.width = len(self.token_bytes) if width is None else int(width)
        self.prefix_ids = [int(i) for i in prefix_ids]
        self.kind = kind
        self.canonical_ok = base is not None and merges is not None
        self.canonical_note = canonical_note
        self.char_classes = char_classes
        self.index = _core.ByteIndex(
            self.token_bytes,
            self.special,
            self.width,
            base=base,
            merges=merges,
            pretok=pretok,
            char_classes=char_classes,
        )

    def __len__(self) -> int:
        return len(self.token_bytes)

    def __repr__(self) -> str:
        return (
            f"ByteVocab(kind={self.kind!r}, tokens={len(self)}, width={self.width}, "
            f"special={int(self.special.sum())}, trie_nodes={self.index.n_nodes}, canonical={self.canonical_ok})"
        )

    @property
    def special_ids(self) -> List[int]:
        return [int(i) for i in np.flatnonzero(self.special)]

    @cached_property
    def first_bytes(self) -> np.ndarray:
        """int64 [width]: the first byte of every byte token, 256 for special tokens, byte-less
        tokens and padding rows (``np.bincount(first_bytes, q)`` = a distribution's first-byte
        marginal). Built once per vocabulary."""
        out = np.full(self.width, 256, dtype=np.int64)
        for i, b in enumerate(self.token_bytes):
            if b and not self.special[i]:
                out[i] = b[0]
        return out

    @cached_property
    def byte_tokens(self) -> np.ndarray:
        """int64 [256]: the (lowest) id of the one-byte token of each byte, -1 when none."""
        out = np.full(256, -1, dtype=np.int64)
        for i, b in enumerate(self.token_bytes):
            if len(b) == 1 and not self.special[i] and out[b[0]] < 0:
                out[b[0]] = i
        return out

    def next_token_bias(self, prev: int, canonical: bool, pprev: int = -1) -> np.ndarray:
        """np.ndarray float32 [width]: 0 where a token may follow the path ``[.., pprev, prev]``
        (-1: none) in the given mode, -inf elsewhere: ``index.next_mask(prev)`` and, in
        canonical mode, the pre-tokenizer look-ahead check ``index.context_mask(pprev, prev)``,
        as an additive logits mask. LRU-cached on this vocabulary, so every ByteLM built on it
        shares the masks; do not modify the result (an accelerator copies it with
        ``torch.from_numpy(...).to(device)``)."""
        key = (int(prev), bool(canonical))
        m = self._mask_cache.get(key)
        if m is None:
            # numpy, not small torch ops: on a loaded machine torch's thread pool made these
            # two 49k-element fills cost more than the Rust mask itself.
            m = np.where(self.index.next_mask(prev, canonical), np.float32(0), np.float32(-np.inf))
            self._mask_cache[key] = m
            if len(self._mask_cache) > MASK_CACHE_SIZE:
                self._mask_cache.popitem(last=False)
        else:
            self._mask_cache.move_to_end(key)
        if not canonical or prev < 0:
            return m
        ckey = (int(pprev), int(prev))
        if ckey in self._context_cache:
            self._context_cache.move_to_end(ckey)
            c = self._context_cache[ckey]
        else:
            ctx = self.index.context_mask(pprev, prev)
            c = None if ctx is None else np.where(ctx, m, np.float32(-np.inf))
            self._context_cache[ckey] = c
            if len(self._context_cache) > CONTEXT_CACHE_SIZE:
                self._context_cache.popitem(last=False)
        return m if c is None else c

    def decode(self, ids: Sequence[int]) -> bytes:
        """Concatenated bytes of ``ids`` (special tokens and padding rows contribute nothing)."""
        n = len(self.token_bytes)
        return b"".join(self.token_bytes[i] for i in ids if 0 <= i < n)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_tokenizer(cls, tokenizer: Any, vocab_size: Optional[int] = None) -> "ByteVocab":
        """Build from a Hugging Face *fast* tokenizer.

        Args:
            tokenizer: a ``PreTrainedTokenizerFast`` (or anything with ``backend_tokenizer``).
            vocab_size: the model's logits width (default: ``len(tokenizer)``); rows past the
                tokenizer are padding.

        Raises:
            TypeError: not a fast tokenizer.
            ValueError: ``vocab_size`` smaller than the tokenizer, or no token has bytes.
        """
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise TypeError(f"expected a Hugging Face fast tokenizer, got {type(tokenizer).__name__}")
        spec = json.loads(backend.to_str())
        model = spec.get("model", {})
        n = len(tokenizer)
        width = n if vocab_size is None else int(vocab_size)
        if width < n:
            raise ValueError(
                f"vocab_size {width} is smaller than the tokenizer's {n} tokens: tokenizer and model do not match"
            )
        pre = _types(spec.get("pre_tokenizer"))
        dec = _types(spec.get("decoder"))
        norm = _types(spec.get("normalizer"))
        byte_level = any(p.get("type") == "ByteLevel" for p in pre)
        metaspace = (
            any(p.get("type") == "Metaspace" for p in pre + dec)
            or any(d.get("type") == "Replace" and (d.get("pattern") or {}).get("String") == _METASPACE for d in dec)
            or any(x.get("type") == "Replace" and x.get("content") == _METASPACE for x in norm)
        )
        kind = "byte_level" if byte_level else ("sentencepiece" if metaspace else "plain")

        special = np.zeros(n, dtype=bool)
        for i in getattr(tokenizer, "added_tokens_decoder", {}) or {}:
            if 0 <= int(i) < n:
                special[int(i)] = True
        for i in getattr(tokenizer, "all_special_ids", []) or []:
            if i is not None and 0 <= int(i) < n:
                special[int(i)] = True

        pieces = tokenizer.convert_ids_to_tokens(list(range(n)))
        byte_decoder = {c: b for b, c in bytes_to_unicode().items()}
        byte_fallback = bool(model.get("byte_fallback", False))
        token_bytes: List[bytes] = []
        for i, piece in enumerate(pieces):
            if special[i] or piece is None:
                token_bytes.append(b"")
                continue
            token_bytes.append(_piece_bytes(piece, kind, byte_decoder, byte_fallback))

        base, merges, pretok, classes, note = _canonical_tables(spec, model, pieces, token_bytes, special, kind, byte_decoder)
        return cls(
            token_bytes,
            special,
            width,
            base=base,
            merges=merges,
            pretok=pretok,
            char_classes=classes,
            prefix_ids=_prefix_ids(tokenizer),
            kind=kind,
            canonical_note=note,
        )


def _piece_bytes(piece: str, kind: str, byte_decoder: Dict[str, int], byte_fallback: bool) -> bytes:
    if kind == "byte_level":
        m = _BYTE_FALLBACK.match(piece)
        if byte_fallback and m:
            return bytes([int(m.group(1), 16)])
        try:
            return bytes(byte_decoder[c] for c in piece)
        except KeyError:
            return piece.encode("utf-8")
    m = _BYTE_FALLBACK.match(piece)
    if m:
        return bytes([int(m.group(1), 16)])
    if kind == "sentencepiece":
        return piece.replace(_METASPACE, " ").encode("utf-8")
    return piece.encode("utf-8")


def _prefix_ids(tokenizer: Any) -> List[int]:
    """Ids the tokenizer puts before the text (e.g. BOS), found by encoding with and without
    special tokens."""
    try:
        with_sp = tokenizer("a", add_special_tokens=True)["input_ids"]
        without = tokenizer("a", add_special_tokens=False)["input_ids"]
    except Exception:  # pragma: no cover - exotic tokenizers
        return []
    k = 0
    while k < len(with_sp) and with_sp[k : k + len(without)] != without:
        k += 1
    return [int(i) for i in with_sp[:k]]


def _canonical_tables(
    spec: Dict[str, Any],
    model: Dict[str, Any],
    pieces: List[Optional[str]],
    token_bytes: List[bytes],
    special: np.ndarray,
    kind: str,
    byte_decoder: Dict[str, int],
) -> Tuple[Optional[List[List[int]]], Optional[np.ndarray], str, Optional[Dict[int, int]], str]:
    """Base symbols, merge table, pre-tokenizer kind and char classes, or Nones with the reason."""
    none = (None, None, "none")
    if model.get("type") != "BPE":
        return (*none, None, f"canonical mode needs a BPE model, got {model.get('type')}")
    if model.get("ignore_merges"):
        return (*none, None, "canonical mode does not support BPE with ignore_merges")
    if model.get("dropout"):
        return (*none, None, "canonical mode does not support BPE dropout")
    pre = _types(spec.get("pre_tokenizer"))
    if kind == "byte_level":
        if len(pre) != 1 or pre[0].get("type") != "ByteLevel":
            return (*none, None, f"unsupported pre-tokenizer for canonical mode: {[p.get('type') for p in pre]}")
        pretok = "gpt2" if pre[0].get("use_regex", True) else "none"
    else:
        ok = all(p.get("type") == "Metaspace" and not p.get("split", False) for p in pre)
        if not ok:
            return (*none, None, f"unsupported pre-tokenizer for canonical mode: {[p.get('type') for p in pre]}")
        pretok = "none"
    vocab: Dict[str, int] = model.get("vocab", {})
    raw = model.get("merges", [])
    merges = []
    for m in raw:
        left, right = (m.split(" ", 1) if isinstance(m, str) else m)
        a, b, c = vocab.get(left), vocab.get(right), vocab.get(left + right)
        if a is not None and b is not None and c is not None:
            merges.append((a, b, c))
    merge_arr = np.asarray(merges, dtype=np.int64).reshape(-1, 3)
    fallback = {i: int(m.group(1), 16) for i, p in enumerate(pieces) if p and (m := _BYTE_FALLBACK.match(p))}
    byte_ids = {b: i for i, b in fallback.items()}
    base: List[List[int]] = []
    for i, piece in enumerate(pieces):
        if special[i] or piece is None or not token_bytes[i]:
            base.append([])
        elif i in fallback:
            base.append([i])
        elif kind == "byte_level":
            syms = [vocab.get(c) for c in piece]
            base.append([] if any(s is None for s in syms) else [int(s) for s in syms])  # type: ignore[arg-type]
        else:
            syms2: List[int] = []
            for ch in piece:
                s = vocab.get(ch)
                if s is not None:
                    syms2.append(int(s))
                    continue
                for byte in ch.encode("utf-8"):
                    fb = byte_ids.get(byte)
                    if fb is None:
                        syms2 = []
                        break
                    syms2.append(fb)
                if not syms2:
                    break
            base.append(syms2)
    classes: Optional[Dict[int, int]] = None
    if pretok == "gpt2":
        chars = set()
        for tb in token_bytes:
            chars.update(c for c in tb.decode("utf-8", errors="ignore") if ord(c) >= 128)
        classes = {ord(c): _char_class(c) for c in chars}
    return base, merge_arr, pretok, classes, ""
