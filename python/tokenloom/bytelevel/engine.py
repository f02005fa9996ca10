"""The expansion engine behind ``ByteLM``: it owns the cover state of the current prefix, the
KV slots, the distribution cache, the look-ahead planner and the memory budget, and runs the
batched forwards that give exact paths their next-token distributions.

One step: :meth:`CoverEngine.sync` moves the cover state to a prefix (a new state when the
prefix does not extend the old one: the context is re-fed or reused, the tokenizer's own
encoding primes the cache only when the plan below does not fit);
:meth:`CoverEngine.ensure_expanded` gives every pending node its distribution (from the cache,
else one forward of their rows, the exact paths below them inside the prefix that can still
matter -- ``CoverTree.extension_plan`` -- and look-ahead rows, checked against the memory bound
first) and its children; :meth:`CoverEngine.greedy_byte` expands only
what can change the argmax.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

from tokenloom.bytelevel.budget import MemoryBoundError, MemoryBudget
from tokenloom.bytelevel.covers import CoverState
from tokenloom.bytelevel.distcache import DistCache, RawLogits
from tokenloom.bytelevel.lookahead import LookaheadPlanner
from tokenloom.bytelevel.rows import rows_for
from tokenloom.bytelevel.slots import KVSlots

__all__ = ["COMPACT_AT", "CoverEngine"]

#: KV slots at which slots no live path needs are dropped (when they are most of the cache).
COMPACT_AT = 2048


class CoverEngine:
    """Covers, KV slots, distribution cache, look-ahead and memory bound of one ByteLM.

    Args:
        model: the HF causal LM (on the CPU or an accelerator: :mod:`.rows`).
        tokenizer: its tokenizer, or None (only used to prime the cache).
        vocab: the ``ByteVocab``.
        canonical: the mode.
        context_ids: token ids before every path.
        max_paths: most live exact paths (ValueError beyond).
        cache_size: distributions kept (``DistCache``).
        pack: pre-packed CPU linears (``KVSlots``).
        lookahead: rows per forward to fill up to (``LookaheadPlanner``).
        max_memory_bytes: the bound (``MemoryBudget``; None: the default).

    Attributes:
        forwards, forward_rows, lookahead_rows, lookahead_hits: counters.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        vocab: Any,
        canonical: bool,
        context_ids: List[int],
        max_paths: int,
        cache_size: int,
        pack: Any,
        lookahead: int,
        max_memory_bytes: Optional[int],
    ) -> None:
        self.tokenizer = tokenizer
        self.vocab = vocab
        self.canonical = canonical
        self.context_ids = context_ids
        self.max_paths = max_paths
        self.lookahead = lookahead
        self.cache = DistCache(cache_size)
        self.budget = MemoryBudget(model, vocab.width, max_memory_bytes)
        self.kv = KVSlots(model, pack)
        self.rows = rows_for(self.kv.device, vocab, canonical)
        self.planner = LookaheadPlanner(vocab, canonical, lookahead, self.rows)
        self.state: Optional[CoverState] = None
        self.forwards = 0
        self.forward_rows = 0
        self.lookahead_rows = 0
        self.lookahead_hits = 0

    def reset(self) -> None:
        """Free the cover state, the KV cache, the distribution cache with its ids, and the
        look-ahead priors (the counters stay)."""
        self.state = None
        self.cache.clear()
        self.kv.clear()
        self.planner.clear()

    def _dist(self, logits_row: Any, prev: int, pprev: int = -1) -> Any:
        """Q(. | path) from a logits row: masked softmax (fp32), float32 [width] where the rows live."""
        return self.rows.dist(logits_row, prev, pprev)

    def _held(self, st: Optional[CoverState]) -> int:
        """Estimated bytes held: KV slots, cached and cover-state distributions, tree nodes."""
        dists = len(self.cache) + (st.dists_held() if st is not None else 0)
        return self.budget.held(self.kv.n, self.kv.bytes_per_slot, dists, len(st.tree) if st is not None else 0)

    def _check_memory(self, st: Optional[CoverState], rows: int, what: str) -> int:
        """Refuse a forward of ``rows`` rows that would pass the bound; returns the bytes held."""
        held = self._held(st)
        self.budget.check(held, rows, self.kv.n, self.kv.bytes_per_slot, what)
        return held

    def memory_usage(self) -> Dict[str, int]:
        """Entries of every internal table and the estimated bytes held.

        Returns:
            dict: ``distributions`` / ``prefix_ids`` / ``lookahead_keys`` (the distribution
            cache, each <= its bound), ``lookahead_priors`` (<= ``lookahead.AFTER_SIZE``),
            ``kv_slots``, ``cover_nodes`` and ``cover_dists`` (the current prefix's cover
            state), ``bytes`` (the estimate the memory bound is checked against).
        """
        st = self.state
        out = dict(self.cache.sizes())
        out["lookahead_priors"] = len(self.planner)
        out["kv_slots"] = self.kv.n
        out["cover_nodes"] = len(st.tree) if st is not None else 0
        out["cover_dists"] = len(st.q) if st is not None else 0
        out["bytes"] = self._held(st)
        return out

    def _new_state(self) -> CoverState:
        """A cover state of the empty prefix: the context in the KV cache (reused when it is
        there), the root's distribution, the root expanded."""
        st = CoverState(self.vocab.index, self.canonical, self.cache.key, self.rows)
        c = len(self.context_ids)
        self.kv.crop(c)
        if self.kv.n < c:
            self.kv.clear()
            self._check_memory(None, c, f"the {c} context ids")
            logits = self.kv.forward_context(self.context_ids)
            self.forwards += 1
            self.forward_rows += c
            if 0 not in self.cache:
                self.cache.put(0, self._dist(logits[-1], -1))
        st.slot[0] = c - 1
        q0 = self.cache.peek(0)
        if q0 is None:  # evicted: recompute from the context's last row
            self.kv.crop(c - 1)
            logits = self.kv.forward([self.context_ids[-1]], [c - 1], [[]], prefix_len=c - 1)
            self.forwards += 1
            self.forward_rows += 1
            q0 = self._dist(logits[-1], -1)
            self.cache.put(0, q0)
        st.expand(0, q0)
        return st

    def _prime(self, prefix: bytes) -> None:
        """Fill the distribution cache along the tokenizer's own encoding of ``prefix`` with one
        plain forward (the main path of a long prompt then costs no sequential forwards).
        Skipped when that forward would not fit the memory bound (it is only a shortcut)."""
        if self.tokenizer is None or len(prefix) < 16:
            return
        text = prefix.decode("utf-8", errors="ignore")
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) < 2 or self.vocab.decode(ids) != prefix[: len(self.vocab.decode(ids))]:
            return
        keys, key = [], 0
        for t in ids:
            key = self.cache.key(key, t)
            keys.append(key)
        if keys[-2] in self.cache:
            return
        c = len(self.context_ids)
        rows = c + len(ids)
        if self._held(self.state) + self.budget.forward_cost(rows, 0, self.kv.bytes_per_slot) > self.budget.limit:
            return
        logits = self.kv.logits_uncached(self.context_ids + ids)
        self.forwards += 1
        self.forward_rows += rows
        for k, t in enumerate(ids[:-1]):
            self.cache.put(keys[k], self._dist(logits[c + k], t, ids[k - 1] if k else -1))

    def sync(self, prefix: bytes) -> CoverState:
        """The cover state of ``prefix``: the current one grown byte by byte when ``prefix``
        extends its prefix, else a new one (after priming the cache)."""
        st = self.state
        if st is None or not prefix.startswith(st.prefix):
            self.state = None  # the old covers are garbage before the new ones grow
            st = self.state = self._new_state()
        for b in prefix[len(st.prefix) :]:
            st.push(b)
        return st

    def _check_size(self, st: CoverState, active: Sequence[int]) -> None:
        """Refuse more than ``max_paths`` live exact paths (ValueError)."""
        if len(active) > self.max_paths:
            raise ValueError(
                f"{len(active)} live exact paths exceed max_paths={self.max_paths} "
                f"({self._mode()} mode, prefix of {len(st.prefix)} bytes); "
                "use canonical=True, a shorter input or a larger max_paths"
            )

    def _mode(self) -> str:
        return "canonical" if self.canonical else "all-covers"

    def _expand(self, st: CoverState, nodes: List[int]) -> None:
        """Give ``nodes`` their distributions (cache or one batched forward) and children."""
        nodes = [n for n in nodes if st.logmass[n] > -math.inf]
        todo = []
        for n in nodes:
            key = st.key[n]
            q = self.cache.get(key)
            if q is None:
                todo.append(n)
                continue
            if isinstance(q, RawLogits):
                q = self._dist(q.logits, q.prev, q.pprev)
                self.cache.put(key, q)
            st.q[n] = q
            if self.cache.take_lookahead(key):
                self.lookahead_hits += 1
        deep: List[Tuple[int, int, int]] = []
        if todo:
            kept, deep = self._plan_deep(st, todo)
            dropped = set(todo) - set(kept)  # paths that cannot matter: expanded without mass
            nodes = [n for n in nodes if n not in dropped]
            todo = kept
        if todo:
            self._forward(st, todo, deep)
        for n in nodes:
            st.expand(n)
        for n in st.pending():
            if st.logmass[n] == -math.inf:
                st.kill(n)

    def _plan_deep(self, st: CoverState, todo: List[int]) -> Tuple[List[int], List[Tuple[int, int, int]]]:
        """Before a forward for ``todo``: drop the paths that can no longer matter (they get an
        empty distribution without a row: ``CoverTree.extension_plan`` proves nothing below
        them can carry mass), and list the exact paths below the others, inside the prefix,
        that will need a distribution, so the same forward computes them (a whole prefix given
        at once costs one forward instead of one per token level).

        Returns:
            (todo, deep): the nodes still to forward, and ``(node, parent row, token)`` rows
            below them (parent row -1: the node itself), a row after its parent. ``deep`` is
            empty when the rows would pass the distribution cache's room (half its size); the
            tokenizer's own encoding is then primed instead, once per prefix.
        """
        limit = self.cache.size // 2
        plan = st.tree.extension_plan(todo, limit)
        if plan is None:  # too many: one level at a time, as without a plan
            if st.primed != st.prefix:
                st.primed = st.prefix
                self._prime(st.prefix)
            return todo, []
        matters, rows = plan
        keep = []
        for n, m in zip(todo, matters):
            if m:
                keep.append(n)
            else:
                st.kill(n)
        return keep, [(todo[i], parent, tok) for i, parent, tok in rows]

    def _deep_rows(
        self, st: CoverState, deep: List[Tuple[int, int, int]], slot_of: Dict[int, int], base: int
    ) -> Tuple[List[int], List[int], List[int], List[List[int]], List[int]]:
        """The rows of ``deep`` this forward must feed: those whose distribution is not cached,
        and their ancestors without a KV slot. ``slot_of`` maps the forward's node rows to their
        slots; fed rows get slots from ``base`` on.

        Returns:
            (keys, tokens, positions, visible, prev tokens) of the fed rows, in order.
        """
        c = len(self.context_ids)
        keys = []
        for node, parent, tok in deep:
            keys.append(self.cache.key(st.key[node] if parent < 0 else keys[parent], tok))
        need = [k not in self.cache for k in keys]
        for i in range(len(deep) - 1, -1, -1):
            parent = deep[i][1]
            if need[i] and parent >= 0:
                need[parent] = True
        feed = [need[i] and (keys[i] not in self.cache or keys[i] not in st.spec_slot) for i in range(len(deep))]
        out_k: List[int] = []
        out_t: List[int] = []
        out_p: List[int] = []
        out_v: List[List[int]] = []
        out_prev: List[int] = []
        vis: List[List[int]] = [[] for _ in deep]
        depth = [0] * len(deep)
        slot = [-1] * len(deep)
        for i, (node, parent, tok) in enumerate(deep):
            if not need[i]:
                continue
            if parent < 0:
                pv = st.path_slots(node, slot_of)
                depth[i] = st.depth[node] + 1
                ptok = st.token[node]
            else:
                pv = vis[parent] + [slot[parent]]
                depth[i] = depth[parent] + 1
                ptok = deep[parent][2]
            vis[i] = pv
            if feed[i]:
                slot[i] = base + len(out_k)
                out_k.append(keys[i])
                out_t.append(tok)
                out_p.append(c - 1 + depth[i])
                out_v.append(pv)
                out_prev.append(ptok)
            else:
                slot[i] = st.spec_slot[keys[i]]
        return out_k, out_t, out_p, out_v, out_prev

    def _forward(self, st: CoverState, nodes: List[int], deep: Sequence[Tuple[int, int, int]] = ()) -> None:
        """One batched forward computing the distributions of ``nodes``, of the exact paths
        ``deep`` below them (:meth:`_plan_deep`) and of look-ahead rows."""
        rows = st.rows_for(nodes)
        self._maybe_compact(st, len(rows))
        base = self.kv.n
        c = len(self.context_ids)
        new_slot = {r: base + i for i, r in enumerate(rows)}
        visible = [st.path_slots(st.parent[r], new_slot) for r in rows]
        tokens = [st.token[r] for r in rows]
        positions = [c - 1 + st.depth[r] for r in rows]
        want = set(nodes)
        fresh = [i for i, r in enumerate(rows) if r in want]
        dk, dt, dp, dv, dprev = self._deep_rows(st, list(deep), new_slot, base + len(rows))
        n_node_rows = len(rows)
        what = f"{len(st.tree.active())} live paths, {self._mode()} mode, prefix of {len(st.prefix)} bytes"
        try:
            held = self._check_memory(st, len(tokens) + len(dt), what)
        except MemoryBoundError:  # the planned rows are a shortcut: go level by level instead
            if not dt:
                raise
            dk, dt, dp, dv, dprev = [], [], [], [], []
            held = self._check_memory(st, len(tokens), what)
        tokens += dt
        positions += dp
        visible += dv
        room = self.lookahead - len(tokens)
        if room > 0:
            room = self.budget.affordable_rows(held, len(rows), room, base, self.kv.bytes_per_slot)
        spec = self.planner.plan(st, rows, fresh, visible[:n_node_rows], room, self.cache, base, c, len(dk))
        for row in spec:
            tokens.append(row.token)
            positions.append(row.position)
            visible.append(row.visible)
        logits = self.kv.forward(tokens, positions, visible, prefix_len=c)
        self.forwards += 1
        self.forward_rows += len(tokens)
        self.lookahead_rows += len(spec)
        note = len(rows) < self.lookahead  # priors only from light forwards (cost ~0.3 ms/row)
        for i, r in enumerate(rows):
            st.slot[r] = new_slot[r]
            if r in want:
                q = self._dist(logits[i], st.token[r], st.token[st.parent[r]])
                st.q[r] = q
                self.cache.put(st.key[r], q)
                if note:
                    self.planner.note(st.token[r], q)
        for j, key in enumerate(dk):
            i = n_node_rows + j
            self.cache.put(key, RawLogits(self.rows.raw(logits, i), dt[j], dprev[j]))
            st.spec_slot[key] = base + i
        for k, row in enumerate(spec):
            i = n_node_rows + len(dk) + k
            self.cache.put(row.key, RawLogits(self.rows.raw(logits, i), row.token, row.parent_token), lookahead=True)
            self.planner.note(row.token, self.rows.softmax(logits[i]))
            st.spec_slot[row.key] = base + i

    def _maybe_compact(self, st: CoverState, incoming: int) -> None:
        """Drop KV slots of nodes no live path goes through, when they dominate the cache."""
        c = len(self.context_ids)
        if self.kv.n + incoming < COMPACT_AT:
            return
        kept = st.live_slots()
        if c + len(kept) > 0.75 * self.kv.n:
            return
        self.kv.keep(list(range(c)) + [s for s, _ in kept])
        st.renumber_slots(kept, c, c - 1)

    def ensure_expanded(self, st: CoverState) -> None:
        """Give every pending node of ``st`` its distribution (and children), until none is."""
        while True:
            pend = st.pending()
            self._check_size(st, st.tree.active())
            if not pend:
                return
            self._expand(st, pend)

    def greedy_byte(self, st: CoverState) -> int:
        """The argmax of P(. | x), exactly, expanding paths lazily (``CoverState.greedy_step``)."""
        while True:
            self._check_size(st, st.tree.active())
            b, todo = st.greedy_step()
            if b is not None:
                return b
            self._expand(st, todo)
