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
sequences decoding to exactly ``x[:j]``); a path needs a model forward only once its last token
ends exactly at the current position. All such paths are scored in one batched forward with a
tree attention mask over a shared KV cache. Token-level distributions are cached by token prefix.
Greedy generation expands a path lazily, only when its (known) probability mass could change
the argmax, so it costs about one forward per token rather than per byte.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from tokenloom.runtime.model import logits_width

from tokenloom._core import CoverTree
from tokenloom.bytelevel.vocab import ByteVocab

__all__ = ["ByteLM", "EOS"]

EOS = 256
BytesLike = Union[bytes, bytearray, memoryview]


def _as_bytes(data: Any, name: str = "prefix") -> bytes:
    if isinstance(data, str):
        raise TypeError(f"{name}: expected bytes, got str (encode it first, e.g. text.encode('utf-8'))")
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"{name}: expected bytes, got {type(data).__name__}")



class _KV:
    """A KV cache whose positions ("slots") hold the context then tree nodes, with a tree mask."""

    def __init__(self, model: Any, pack: Any = "auto") -> None:
        from tokenloom.runtime.cpupack import resolve_pack

        self.model = model
        self.pack = resolve_pack(model, pack)
        self.cache: Any = None
        self.n = 0

    def crop(self, n: int) -> None:
        if self.cache is not None and self.n > n:
            self.cache.crop(n)
        self.n = min(self.n, n)

    def keep(self, slots: List[int]) -> None:
        """Keep only ``slots`` (ascending), in that order."""
        import torch

        if self.cache is None:
            return
        idx = torch.tensor(slots, dtype=torch.long)
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(2, idx)
            layer.values = layer.values.index_select(2, idx)
        self.n = len(slots)

    def forward(self, tokens: List[int], positions: List[int], visible: List[List[int]]) -> Any:
        """One forward of ``len(tokens)`` rows; row i sees the slots in ``visible[i]`` and itself
        (new rows get slots ``n, n+1, ...``). Returns float32 logits [rows, width]."""
        import torch
        from transformers import DynamicCache

        q = len(tokens)
        total = self.n + q
        mask = torch.full((1, 1, q, total), torch.finfo(torch.float32).min, dtype=torch.float32)
        for i, vis in enumerate(visible):
            if vis:
                mask[0, 0, i, torch.tensor(vis, dtype=torch.long)] = 0.0
            mask[0, 0, i, self.n + i] = 0.0
        if self.cache is None:
            self.cache = DynamicCache()
        from tokenloom.runtime.cpupack import packed_linears

        with torch.no_grad(), packed_linears(self.model, self.pack):
            out = self.model(
                input_ids=torch.tensor([tokens], dtype=torch.long),
                position_ids=torch.tensor([positions], dtype=torch.long),
                attention_mask=mask,
                past_key_values=self.cache,
                use_cache=True,
            )
        self.cache = out.past_key_values
        self.n = total
        return out.logits[0].float()


class _Raw:
    """Logits of a look-ahead row whose distribution is not needed yet: masking and softmax
    wait until a path uses it (most look-ahead rows are never used, and the allowed-token mask
    of a new previous token costs milliseconds)."""

    __slots__ = ("logits", "prev", "pprev")

    def __init__(self, logits: Any, prev: int, pprev: int) -> None:
        self.logits, self.prev, self.pprev = logits, prev, pprev


class _State:
    """Covers of one prefix: the Rust cover tree plus masses, distributions and KV slots."""

    def __init__(self, lm: "ByteLM") -> None:
        self.tree = CoverTree(lm.vocab.index, lm.canonical)
        self.logmass: Dict[int, float] = {0: 0.0}
        self.depth: Dict[int, int] = {0: 0}
        self.key: Dict[int, int] = {0: 0}
        self.q: Dict[int, np.ndarray] = {}
        self.slot: Dict[int, int] = {}
        self.token: Dict[int, int] = {0: -1}
        self.parent: Dict[int, int] = {0: -1}
        self.end: Dict[int, int] = {0: 0}
        # Look-ahead rows already in the KV cache: token-prefix key -> slot.
        self.spec_slot: Dict[int, int] = {}


class ByteLM:
    """Exact next-byte distributions, log-probabilities and byte-level generation.

    Args:
        model: a Hugging Face causal LM (eval mode; CPU or GPU).
        tokenizer: its fast tokenizer.
        canonical: sum canonical covers only (default) or all covers (see the module docstring).
        vocab: a prebuilt ``ByteVocab`` (default: built from the tokenizer).
        context_ids: token ids every byte string follows (default: the ids the tokenizer puts
            before text, e.g. BOS; falling back to its BOS/EOS token).
        max_paths: refuse (ValueError) when more exact paths than this are live -- all-covers
            mode grows exponentially on long inputs; nothing is ever pruned silently.
        cache_size: token-level distributions kept (by token prefix).
        pack: run float32 CPU linears through pre-packed oneDNN weights (:mod:`tokenloom.runtime.cpupack`;
            ``"auto"`` default, ``True`` or ``False``); many-row forwards get much cheaper.
        lookahead: fill every batched forward up to this many rows with *look-ahead rows*: the
            heaviest straddling extensions (path + a token running past the prefix end), whose
            distributions the next bytes will need if they follow that token (0 = off). Exact:
            it only changes which forward computes a distribution. A forward of a few rows
            costs about as much as one row on CPU, so this saves most per-byte forwards on text.

    Raises:
        ValueError: the model's logits width is smaller than the tokenizer, canonical mode is
            unavailable for this tokenizer, or no context id can be found.
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
        self._dists: "OrderedDict[int, Any]" = OrderedDict()  # np.ndarray, or _Raw logits
        self._keys: Dict[Tuple[int, int], int] = {}
        self._cache_size = int(cache_size)
        self._kv = _KV(model, pack)
        self._state: Optional[_State] = None
        self.lookahead = lookahead
        self._spec_keys: set = set()
        # Look-ahead priors: first-byte distribution of the token after a path ending in token t
        # (from the latest distribution computed for such a path), and their running mean.
        self._after: "OrderedDict[int, np.ndarray]" = OrderedDict()
        self._after_sum = np.zeros(256, dtype=np.float64)
        self._after_n = 0
        self.forwards = 0
        self.forward_rows = 0
        self.lookahead_rows = 0
        self.lookahead_hits = 0

    # ------------------------------------------------------------------ token-level pieces
    def _mask(self, prev: int, pprev: int = -1) -> Any:
        """Additive float32 mask (0 allowed, -inf not) of the rows that may follow a path ending
        ``[.., pprev, prev]`` (cached on the ByteVocab: ByteLMs sharing one vocabulary share
        the masks)."""
        return self.vocab.next_token_bias(prev, self.canonical, pprev)

    def _dist(self, logits_row: Any, prev: int, pprev: int = -1) -> np.ndarray:
        """Q(. | path) from a logits row: masked softmax (fp32, max-shifted), float32 [width]."""
        import torch

        return torch.softmax(logits_row + self._mask(prev, pprev), dim=-1).numpy()

    def _cache_put(self, key: int, q: np.ndarray) -> None:
        self._dists[key] = q
        if len(self._dists) > self._cache_size:
            self._dists.popitem(last=False)

    # ------------------------------------------------------------------ state management
    def _new_state(self) -> _State:
        st = _State(self)
        self._kv.crop(len(self.context_ids))
        if self._kv.n < len(self.context_ids):
            self._kv.cache = None
            self._kv.n = 0
            c = len(self.context_ids)
            logits = self._kv.forward(self.context_ids, list(range(c)), [list(range(i)) for i in range(c)])
            self.forwards += 1
            self.forward_rows += c
            if 0 not in self._dists:
                self._cache_put(0, self._dist(logits[-1], -1))
        st.slot[0] = len(self.context_ids) - 1
        q0 = self._dists.get(0)
        if q0 is None:  # evicted: recompute from the context's last row
            self._kv.crop(len(self.context_ids) - 1)
            c = len(self.context_ids)
            logits = self._kv.forward([self.context_ids[-1]], [c - 1], [list(range(c - 1))])
            self.forwards += 1
            q0 = self._dist(logits[-1], -1)
            self._cache_put(0, q0)
        st.q[0] = q0
        self._register(st, st.tree.expand(0))
        return st

    def _register(self, st: _State, nodes: Sequence[int]) -> None:
        """Record token, parent, depth, mass and prefix key of freshly created nodes."""
        for n in nodes:
            tok, par, _start, end, _exp, _live = st.tree.info(n)
            st.token[n], st.parent[n], st.end[n] = tok, par, end
            st.depth[n] = st.depth[par] + 1
            qpar = st.q[par]
            qp = float(qpar[tok]) if qpar.size else 0.0
            st.logmass[n] = st.logmass[par] + (math.log(qp) if qp > 0 else -math.inf)
            st.key[n] = self._keys.setdefault((st.key[par], tok), len(self._keys) + 1)
            slot = st.spec_slot.pop(st.key[n], None)
            if slot is not None:
                st.slot[n] = slot

    def _prime(self, prefix: bytes) -> None:
        """Fill the distribution cache along the tokenizer's own encoding of ``prefix`` with one
        plain forward (the main path of a long prompt then costs no sequential forwards)."""
        import torch

        if self.tokenizer is None or len(prefix) < 16:
            return
        text = prefix.decode("utf-8", errors="ignore")
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) < 2 or self.vocab.decode(ids) != prefix[: len(self.vocab.decode(ids))]:
            return
        keys, key = [], 0
        for t in ids:
            key = self._keys.setdefault((key, t), len(self._keys) + 1)
            keys.append(key)
        if keys[-2] in self._dists:
            return
        from tokenloom.runtime.cpupack import packed_linears

        with torch.no_grad(), packed_linears(self.model, self._kv.pack):
            logits = self.model(torch.tensor([self.context_ids + ids])).logits[0].float()
        self.forwards += 1
        self.forward_rows += len(self.context_ids) + len(ids)
        c = len(self.context_ids)
        for k, t in enumerate(ids[:-1]):
            self._cache_put(keys[k], self._dist(logits[c + k], t, ids[k - 1] if k else -1))

    def _sync(self, prefix: bytes) -> _State:
        st = self._state
        if st is None or not prefix.startswith(st.tree.prefix):
            self._prime(prefix)
            st = self._state = self._new_state()
        for b in prefix[len(st.tree.prefix) :]:
            self._register(st, st.tree.push(b))
        return st

    def _pending(self, st: _State) -> List[int]:
        return [n for n in st.tree.active() if n not in st.q]

    def _check_size(self, st: _State, active: Sequence[int]) -> None:
        if len(active) > self.max_paths:
            raise ValueError(
                f"{len(active)} live exact paths exceed max_paths={self.max_paths} "
                f"({'canonical' if self.canonical else 'all-covers'} mode, prefix of {len(st.tree.prefix)} bytes); "
                "use canonical=True, a shorter input or a larger max_paths"
            )

    def _expand(self, st: _State, nodes: List[int]) -> None:
        """Give ``nodes`` their distributions (cache or one batched forward) and children."""
        nodes = [n for n in nodes if st.logmass[n] > -math.inf]
        todo = []
        for n in nodes:
            q = self._dists.get(st.key[n])
            if q is None:
                todo.append(n)
            else:
                if isinstance(q, _Raw):
                    q = self._dists[st.key[n]] = self._dist(q.logits, q.prev, q.pprev)
                self._dists.move_to_end(st.key[n])
                st.q[n] = q
                if st.key[n] in self._spec_keys:
                    self._spec_keys.discard(st.key[n])
                    self.lookahead_hits += 1
        if todo:
            self._forward(st, todo)
        for n in nodes:
            self._register(st, st.tree.expand(n))
        for n in self._pending(st):
            if st.logmass[n] == -math.inf:
                st.q[n] = np.zeros(0, dtype=np.float32)
                self._register(st, st.tree.expand(n))

    def _forward(self, st: _State, nodes: List[int]) -> None:
        import torch

        rows: List[int] = []
        seen = set()
        for n in nodes:
            # ``n`` itself always gets a row (it may hold the KV slot of a look-ahead row whose
            # distribution was evicted from the cache); its ancestors only when they lack a slot.
            if n in seen:
                continue
            chain = [n]
            seen.add(n)
            m = st.parent[n]
            while m not in st.slot and m not in seen:
                chain.append(m)
                m = st.parent[m]
            for m in reversed(chain):
                seen.add(m)
                rows.append(m)
        rows.sort(key=lambda r: st.depth[r])
        self._maybe_compact(st, len(rows))
        base = self._kv.n
        ctx = list(range(len(self.context_ids)))
        new_slot = {r: base + i for i, r in enumerate(rows)}
        c = len(self.context_ids)
        visible, tokens, positions = [], [], []
        for r in rows:
            visible.append(ctx + self._path_slots(st, st.parent[r], new_slot))
            tokens.append(st.token[r])
            positions.append(c - 1 + st.depth[r])
        spec = self._lookahead(st, rows, visible, self.lookahead - len(rows))
        for t, pos, vis, _key, _ptok in spec:
            tokens.append(t)
            positions.append(pos)
            visible.append(vis)
        logits = self._kv.forward(tokens, positions, visible)
        self.forwards += 1
        self.forward_rows += len(tokens)
        self.lookahead_rows += len(spec)
        want = set(nodes)
        note = len(rows) < self.lookahead  # priors only from light forwards (cost ~0.3 ms/row)
        for i, r in enumerate(rows):
            st.slot[r] = new_slot[r]
            if r in want:
                q = self._dist(logits[i], st.token[r], st.token[st.parent[r]])
                st.q[r] = q
                self._cache_put(st.key[r], q)
                if note:
                    self._note_after(st.token[r], q)
        for k, (t, _pos, _vis, key, ptok) in enumerate(spec):
            i = len(rows) + k
            self._cache_put(key, _Raw(logits[i].clone(), t, ptok))  # masked when (if) a path uses it
            self._note_after(t, torch.softmax(logits[i], dim=-1).numpy())
            self._spec_keys.add(key)
            st.spec_slot[key] = base + i

    @staticmethod
    def _path_slots(st: _State, n: int, new_slot: Optional[Dict[int, int]] = None) -> List[int]:
        """KV slots of node ``n`` and its ancestors (root excluded), ascending; ``new_slot``
        (rows of the forward being built) wins over older slots."""
        out = []
        while n != 0:
            out.append(new_slot[n] if new_slot is not None and n in new_slot else st.slot[n])
            n = st.parent[n]
        return sorted(out)

    def _note_after(self, tok: int, q: np.ndarray) -> None:
        """Record the first-byte distribution of the token after a path ending in ``tok``
        (the prior of two-level look-ahead rows)."""
        if self.lookahead <= 0:
            return
        fb = np.bincount(self.vocab.first_bytes, weights=q, minlength=257)[:256]
        tot = fb.sum()
        if not tot > 0:
            return
        fb /= tot
        self._after[tok] = fb
        self._after.move_to_end(tok)
        if len(self._after) > 4096:
            self._after.popitem(last=False)
        self._after_sum += fb
        self._after_n += 1

    def _after_prior(self, tok: int) -> np.ndarray:
        fb = self._after.get(tok)
        if fb is not None:
            return fb
        return self._after_sum / self._after_n if self._after_n else np.full(256, 1.0 / 256)

    def _lookahead(
        self, st: _State, rows: List[int], row_vis: List[List[int]], room: int
    ) -> List[Tuple[int, int, List[int], int, int]]:
        """Up to ``room`` look-ahead rows ``(token, position, visible slots, prefix key, parent
        token)``, most likely to be needed first:

        - one level: the heaviest straddling extensions ``node + token`` of nodes with a
          distribution and a KV slot (:meth:`CoverTree.top_straddling`; probability ~ their
          share of the prefix mass times the mass of continuations through the token's bytes);
        - two levels: a one-byte token after a row of this forward (or after a one-level row),
          when the next byte would make it an exact path; the byte is guessed by
          :meth:`_push_second`.

        Rows whose distribution is cached or already in the KV cache are skipped. The choice
        only moves work between forwards: every distribution is the model's own.
        """
        if room <= 0:
            return []
        import heapq

        c = len(self.context_ids)
        nodes, qs, lms = [], [], []
        for n in st.tree.active():
            q = st.q.get(n)
            if q is not None and q.size and n in st.slot and st.logmass[n] > -math.inf:
                nodes.append(n)
                qs.append(q)
                lms.append(st.logmass[n])
        # Candidates: (-score, tiebreak, token, parent key, position, visible slots, parent
        # token, distribution the token was drawn from). The visible slots of a two-level row
        # include its one-level parent's slot, known once that parent is taken (its slot is the
        # row index it gets).
        heap: List[Tuple[float, int, int, int, int, List[int], int, Any]] = []
        tie = 0
        fresh = [(i, r) for i, r in enumerate(rows) if r not in st.q]  # the new exact paths
        ref = max(lms + [st.logmass[r] for _, r in fresh], default=0.0)
        scales = [math.exp(x - ref) for x in lms]
        norm = sum(scales) + sum(math.exp(st.logmass[r] - ref) for _, r in fresh)
        if not norm > 0:
            return []
        if nodes:
            q_of = dict(zip(nodes, qs))
            for n, t, score in st.tree.top_straddling(nodes, qs, scales, 2 * room + 4):
                vis = list(range(c)) + self._path_slots(st, n)
                heap.append((-score / norm, tie, t, st.key[n], c + st.depth[n], vis, st.token[n], q_of[n]))
                tie += 1
        base = self._kv.n
        for i, r in fresh:
            share = math.exp(st.logmass[r] - ref) / norm
            tie = self._push_second(
                heap, tie, share, st.token[r], st.key[r], c + st.depth[r], row_vis[i] + [base + i], st.q.get(st.parent[r])
            )
        heapq.heapify(heap)
        out: List[Tuple[int, int, List[int], int, int]] = []
        taken = set()
        while heap and len(out) < room:
            neg, _, t, pkey, pos, vis, ptok, pq = heapq.heappop(heap)
            key = self._keys.setdefault((pkey, t), len(self._keys) + 1)
            if key in taken or key in self._dists or key in st.spec_slot:
                continue
            taken.add(key)
            out.append((t, pos, vis, key, ptok))
            slot = base + len(rows) + len(out) - 1
            tie = self._push_second(heap, tie, -neg, t, key, pos + 1, vis + [slot], pq, push=True)
        return out

    def _push_second(
        self,
        heap: list,
        tie: int,
        p_parent: float,
        ptok: int,
        pkey: int,
        pos: int,
        vis: List[int],
        pq: Any = None,
        push: bool = False,
    ) -> int:
        """Add two-level candidates: the two likeliest one-byte tokens after token ``ptok``.

        The next byte's probability is read off the distribution ``pq`` that ``ptok`` was
        drawn from: the tokens that continue ``ptok``'s bytes say which byte comes next if the
        text goes on inside a longer token, and the mass of ``ptok`` itself (the text has a
        token boundary here) is spread by the first-byte prior seen after ``ptok`` before.
        """
        import heapq

        prior = self._after_prior(ptok)
        if pq is not None and pq.size:
            cont = self.vocab.index.continuation_masses(self.vocab.token_bytes[ptok], pq)
            total = cont.sum()
            if total > 0:
                prior = (cont[:256] + cont[256] * prior) / total
        for b in np.argsort(-prior, kind="stable")[:2]:
            u = int(self.vocab.byte_tokens[b])
            if u < 0 or not prior[b] > 0:
                continue
            if self.canonical and not self.vocab.index.valid_pair(ptok, u):
                continue
            item = (-p_parent * float(prior[b]), tie, u, pkey, pos, vis, ptok, None)
            tie += 1
            if push:
                heapq.heappush(heap, item)
            else:
                heap.append(item)
        return tie

    def _maybe_compact(self, st: _State, incoming: int) -> None:
        """Drop KV slots of nodes no live path goes through, when they dominate the cache."""
        c = len(self.context_ids)
        if self._kv.n + incoming < 2048:
            return
        needed = set()
        for n in st.tree.active():
            m = n
            while m != 0 and m not in needed:
                needed.add(m)
                m = st.parent[m]
        keep_nodes = sorted((st.slot[n], n) for n in needed if n in st.slot)
        if c + len(keep_nodes) > 0.75 * self._kv.n:
            return
        self._kv.keep(list(range(c)) + [s for s, _ in keep_nodes])
        st.slot = {0: c - 1}
        st.spec_slot = {}
        for i, (_, n) in enumerate(keep_nodes):
            st.slot[n] = c + i

    def _ensure_expanded(self, st: _State) -> None:
        while True:
            pend = self._pending(st)
            self._check_size(st, st.tree.active())
            if not pend:
                return
            self._expand(st, pend)

    def _masses(self, st: _State) -> Tuple[np.ndarray, float, float]:
        """(m[257] relative next-byte/EOS masses, log scale, pending mass bound relative to the
        same scale) over expanded live nodes."""
        live, qs, lms = [], [], []
        pending_lm = []
        end = len(st.tree.prefix)
        for n in st.tree.active():
            lm = st.logmass[n]
            if lm == -math.inf:
                continue
            if n in st.q:
                if st.q[n].size and st.tree.info(n)[5]:
                    live.append(n)
                    qs.append(st.q[n])
                    lms.append(lm)
            else:
                pending_lm.append(lm)
        ref = max(lms + pending_lm) if (lms or pending_lm) else 0.0
        scales = [math.exp(x - ref) for x in lms]
        out = np.zeros(257, dtype=np.float64)
        if live:
            raw = st.tree.byte_masses(live, qs, scales)
            out[:256] = raw[:256]
            eos = 0.0
            for n, q, s in zip(live, qs, scales):
                if st.end[n] == end:
                    eos += s * float(q[self.special].astype(np.float64).sum())
            out[256] = eos
        pending = float(sum(math.exp(x - ref) for x in pending_lm))
        return out, ref, pending

    # ------------------------------------------------------------------ public API
    def next_byte_probs(self, prefix: BytesLike) -> np.ndarray:
        """P(next byte | prefix) for the 256 bytes, then end-of-text at index 256.

        Args:
            prefix (bytes): the byte prefix (may end inside a token or a UTF-8 character).

        Returns:
            np.ndarray[float64], shape [257], sums to 1.

        Raises:
            TypeError: prefix is not bytes. ValueError: the prefix has probability 0 (e.g. a
            byte no token contains) or too many live paths.
        """
        prefix = _as_bytes(prefix)
        st = self._sync(prefix)
        self._ensure_expanded(st)
        m, _, _ = self._masses(st)
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
            TypeError: data is not bytes. ValueError: too many live paths.
        """
        data = _as_bytes(data, "data")
        if not data:
            return 0.0
        st = self._sync(data)
        self._ensure_expanded(st)
        end = len(data)
        nodes, qs, lms = [], [], []
        for n in st.tree.active():
            if st.end[n] < end and st.logmass[n] > -math.inf and n in st.q and st.q[n].size and st.tree.info(n)[5]:
                nodes.append(n)
                qs.append(st.q[n])
                lms.append(st.logmass[n])
        if not nodes:
            return -math.inf
        ref = max(lms)
        raw = st.tree.byte_masses(nodes, qs, [math.exp(x - ref) for x in lms])
        total = float(raw.sum())
        return ref + math.log(total) if total > 0 else -math.inf

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
            TypeError: prefix is not bytes. ValueError: bad temperature/top_p/max_bytes.
        """
        prefix = _as_bytes(prefix)
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
            b = self._greedy_byte(st) if temperature == 0 else self._sample_byte(st, temperature, top_p, rng)
            if b == EOS:
                if stop_at_eos:
                    break
                continue
            out.append(b)
            self._register(st, st.tree.push(b))
            if b in stop_bytes:
                break
        return bytes(out)

    def _greedy_byte(self, st: _State) -> int:
        """The argmax of P(. | x), exactly: paths whose distribution is unknown are expanded only
        while their total mass could still change the argmax (heaviest first)."""
        while True:
            self._check_size(st, st.tree.active())
            m, ref, pending = self._masses(st)
            order = np.argsort(-m, kind="stable")
            top, second = m[order[0]], m[order[1]]
            pend = [n for n in self._pending(st) if st.logmass[n] > -math.inf]
            if not pend or top > second + pending:
                if not m.sum() > 0:
                    raise ValueError("the prefix has probability 0 under the model")
                return int(order[0])
            pend.sort(key=lambda n: -st.logmass[n])
            masses = np.exp(np.array([st.logmass[n] - ref for n in pend]))
            rest = masses.sum() - np.cumsum(masses)
            k = int(np.searchsorted(-rest, -(top - second), side="right")) + 1 if top > second else 1
            self._expand(st, pend[: max(1, min(k, len(pend)))])

    def _sample_byte(self, st: _State, temperature: float, top_p: float, rng: np.random.Generator) -> int:
        self._ensure_expanded(st)
        m, _, _ = self._masses(st)
        total = m.sum()
        if not total > 0:
            raise ValueError("the prefix has probability 0 under the model")
        p = m / total
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
        """Forget the incremental state (the distribution cache stays)."""
        self._state = None
