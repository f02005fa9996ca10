"""Look-ahead rows: distributions the next bytes will probably need, computed in a forward that
is made anyway.

A forward of a few rows costs about as much as one row on CPU, so ByteLM fills each batched
forward up to ``lookahead`` rows with token prefixes that are not exact paths yet but will be if
the text goes on as the model expects. Exact: it only changes which forward computes a
distribution, never the distribution (the result is cached by token prefix; a node created
later for that prefix adopts the row's KV slot).

:class:`LookaheadPlanner` chooses the rows, most likely first:

- one level: the heaviest *straddling* extensions ``node + token`` of nodes with a distribution
  and a KV slot (``CoverTree.top_straddling``: probability ~ the node's share of the prefix
  mass times the mass of continuations through the token's bytes);
- two levels: a one-byte token after a row of this forward (or after a one-level row), when
  the next byte would make it an exact path. The byte is guessed from the distribution the
  parent token was drawn from, and from the first-byte *prior* seen after that token before
  (:meth:`LookaheadPlanner.note`, an LRU table of at most :data:`AFTER_SIZE` tokens).
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict
from typing import Any, List, NamedTuple, Sequence, Tuple

import numpy as np

__all__ = ["AFTER_SIZE", "LookaheadPlanner", "LookaheadRow"]

#: First-byte priors kept (one per previous token, float64 [256] each).
AFTER_SIZE = 4096

# (-score, tiebreak, token, parent key, position, visible slots, parent token, distribution
# the token was drawn from)
_Cand = Tuple[float, int, int, int, int, List[int], int, Any]


class LookaheadRow(NamedTuple):
    """One look-ahead row of a forward.

    Attributes:
        token: the row's token.
        position: its position id.
        visible: the slots it sees besides the context and itself (its path).
        key: the token-prefix id its distribution is cached under.
        parent_token: the token before it (for the allowed-token mask).
    """

    token: int
    position: int
    visible: List[int]
    key: int
    parent_token: int


class LookaheadPlanner:
    """Chooses look-ahead rows (module docstring) and keeps the first-byte priors.

    Args:
        vocab: the ``ByteVocab`` (first bytes, one-byte tokens, canonical pair checks).
        canonical: the mode (two-level rows must be valid pairs).
        rows: rows per forward to fill up to (0 = off).
        dists: the owner of the distributions (:mod:`.rows`), which reads the masses off them.
    """

    def __init__(self, vocab: Any, canonical: bool, rows: int, dists: Any) -> None:
        self.vocab = vocab
        self.canonical = canonical
        self.rows = rows
        self.dists = dists
        self._after: "OrderedDict[int, np.ndarray]" = OrderedDict()
        self._after_sum = np.zeros(256, dtype=np.float64)
        self._after_n = 0

    def __len__(self) -> int:
        """Priors held."""
        return len(self._after)

    def clear(self) -> None:
        """Forget every prior."""
        self._after.clear()
        self._after_sum = np.zeros(256, dtype=np.float64)
        self._after_n = 0

    def note(self, tok: int, q: Any) -> None:
        """Record the first-byte distribution of the token after a path ending in ``tok``, from
        ``q`` (float32 [width], that path's next-token distribution)."""
        if self.rows <= 0:
            return
        fb = self.dists.first_byte_masses(q)
        tot = fb.sum()
        if not tot > 0:
            return
        fb = fb / tot
        self._after[tok] = fb
        self._after.move_to_end(tok)
        if len(self._after) > AFTER_SIZE:
            self._after.popitem(last=False)
        self._after_sum += fb
        self._after_n += 1

    def prior(self, tok: int) -> np.ndarray:
        """float64 [256]: the first byte expected after token ``tok`` (the mean of all priors,
        or uniform, when ``tok`` has none)."""
        fb = self._after.get(tok)
        if fb is not None:
            return fb
        return self._after_sum / self._after_n if self._after_n else np.full(256, 1.0 / 256)

    def plan(
        self,
        st: Any,
        rows: Sequence[int],
        fresh: Sequence[int],
        row_vis: Sequence[List[int]],
        room: int,
        cache: Any,
        base: int,
        context_len: int,
        skip: int = 0,
    ) -> List[LookaheadRow]:
        """Up to ``room`` look-ahead rows for a forward, most likely to be needed first. Rows
        whose distribution is cached or already in the KV cache are skipped.

        Args:
            st: the ``CoverState``.
            rows: the nodes the forward feeds (row ``i`` gets slot ``base + i``).
            fresh: indices into ``rows`` of the nodes that get their first distribution.
            row_vis: the slots each row sees.
            room: most look-ahead rows.
            cache: the ``DistCache`` (interning and membership).
            base: slots in the KV cache before the forward.
            context_len: context ids before every path (positions start after them).
            skip: other rows fed after ``rows`` and before the look-ahead rows.
        """
        if room <= 0:
            return []
        nodes, qs, lms = [], [], []
        for n in st.tree.active():
            q = st.q.get(n)
            if q is not None and len(q) and n in st.slot and st.logmass[n] > -math.inf:
                nodes.append(n)
                qs.append(q)
                lms.append(st.logmass[n])
        heap: List[_Cand] = []
        tie = 0
        ref = max(lms + [st.logmass[rows[i]] for i in fresh], default=0.0)
        scales = [math.exp(x - ref) for x in lms]
        norm = sum(scales) + sum(math.exp(st.logmass[rows[i]] - ref) for i in fresh)
        if not norm > 0:
            return []
        c = context_len
        if nodes:
            q_of = dict(zip(nodes, qs))
            for n, t, score in self.dists.top_straddling(st.tree, nodes, qs, scales, st.rests(nodes), 2 * room + 4):
                heap.append((-score / norm, tie, t, st.key[n], c + st.depth[n], st.path_slots(n), st.token[n], q_of[n]))
                tie += 1
        for i in fresh:
            r = rows[i]
            share = math.exp(st.logmass[r] - ref) / norm
            tie = self._push_second(
                heap, tie, share, st.token[r], st.key[r], c + st.depth[r], row_vis[i] + [base + i], st.q.get(st.parent[r])
            )
        heapq.heapify(heap)
        out: List[LookaheadRow] = []
        taken = set()
        while heap and len(out) < room:
            neg, _, t, pkey, pos, vis, ptok, pq = heapq.heappop(heap)
            key = cache.key(pkey, t)
            if key in taken or key in cache or key in st.spec_slot:
                continue
            taken.add(key)
            out.append(LookaheadRow(t, pos, vis, key, ptok))
            slot = base + len(rows) + skip + len(out) - 1
            tie = self._push_second(heap, tie, -neg, t, key, pos + 1, vis + [slot], pq, push=True)
        return out

    def _push_second(
        self,
        heap: List[_Cand],
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
        prior = self.prior(ptok)
        if pq is not None and len(pq):
            cont = self.dists.continuation(self.vocab.token_bytes[ptok], pq)
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
