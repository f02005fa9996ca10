"""``generate(method="lookup")``: prompt lookup decoding (n-gram matching, as transformers'
``prompt_lookup_num_tokens``), as the smallest :class:`~tokenloom.spec.base.Drafter`.

The drafter indexes every n-gram (n = 1 .. ``max_ngram``) of the sequence so far (prompt and
output) by the positions where it ends. Each step it takes the longest n-gram ending at the
root that occurred before, and drafts the tokens that followed its occurrences — the most recent
occurrence first, up to ``num_tokens`` tokens each, at most ``max_matches`` occurrences, merged
into one prefix tree (so several different continuations become branches) and cut to
``max_nodes`` draft nodes. The draft is deterministic: greedy verification gives exactly the
target's greedy output, sampled verification is lossless.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from tokenloom._arrays import as_count
from tokenloom.spec.base import DraftTree

__all__ = ["LookupDrafter", "make_lookup_drafter"]

#: Defaults: transformers' prompt lookup uses n-grams up to 2 and 10 output tokens.
DEFAULT_MAX_NGRAM = 2
DEFAULT_NUM_TOKENS = 10
DEFAULT_MAX_MATCHES = 4
DEFAULT_MAX_NODES = 16


class LookupDrafter:
    """N-gram lookup in the request's own tokens.

    Args:
        max_ngram: longest n-gram matched (>= 1); shorter ones are tried when it has no match.
        num_tokens: most draft tokens per continuation (= deepest node, >= 1).
        max_matches: most occurrences whose continuations are merged (>= 1; 1 gives a chain).
        max_nodes: most draft nodes per tree, root excluded (>= 1).

    Raises:
        ValueError: a size below its minimum.
    """

    name = "lookup"
    prefill_positions = 1

    def __init__(
        self,
        max_ngram: int = DEFAULT_MAX_NGRAM,
        num_tokens: int = DEFAULT_NUM_TOKENS,
        max_matches: int = DEFAULT_MAX_MATCHES,
        max_nodes: int = DEFAULT_MAX_NODES,
    ):
        self.max_ngram = as_count(max_ngram, "max_ngram", 1)
        self.num_tokens = as_count(num_tokens, "num_tokens", 1)
        self.max_matches = as_count(max_matches, "max_matches", 1)
        self.max_nodes = as_count(max_nodes, "max_nodes", 1)
        self.seq: List[int] = []
        # n-gram -> end positions (increasing) of its occurrences in ``seq``.
        self._index: Dict[Tuple[int, ...], List[int]] = {}
        self._matched = 0
        self._misses = 0

    def _push(self, tokens: List[int]) -> None:
        for t in tokens:
            self.seq.append(int(t))
            end = len(self.seq) - 1
            for n in range(1, min(self.max_ngram, end + 1) + 1):
                self._index.setdefault(tuple(self.seq[end - n + 1 : end + 1]), []).append(end)

    def prefill(self, input_ids: Any, first_token: int, cache: Any, logits: Any) -> None:
        """Index the prompt and the first token."""
        self.seq = []
        self._index = {}
        self._push([int(t) for t in input_ids[0].tolist()] + [int(first_token)])

    def continuations(self) -> List[List[int]]:
        """The continuations the next draft merges (most recent occurrence first)."""
        end = len(self.seq) - 1
        for n in range(min(self.max_ngram, len(self.seq)), 0, -1):
            ends = self._index.get(tuple(self.seq[end - n + 1 :]))
            if not ends or len(ends) < 2:
                continue
            out = []
            for e in reversed(ends[:-1]):  # the last occurrence is the root itself
                cont = self.seq[e + 1 : e + 1 + self.num_tokens]
                if cont:
                    out.append(cont)
                if len(out) == self.max_matches:
                    break
            if out:
                return out
        return []

    def propose(self, root: int, past_len: int) -> DraftTree:
        """The merged prefix tree of the continuations below ``root``."""
        if not self.seq or self.seq[-1] != int(root):
            raise ValueError(f"propose: root {root} is not the newest token of the indexed sequence")
        conts = self.continuations()
        if not conts:
            self._misses += 1
            return DraftTree.root_only(root)
        self._matched += 1
        tokens, parents, depths = [int(root)], [-1], [0]
        children: Dict[Tuple[int, int], int] = {}
        for cont in conts:
            node = 0
            for t in cont:
                nxt = children.get((node, t))
                if nxt is None:
                    if len(tokens) - 1 >= self.max_nodes:
                        break
                    nxt = len(tokens)
                    children[(node, t)] = nxt
                    tokens.append(t)
                    parents.append(node)
                    depths.append(depths[node] + 1)
                node = nxt
        return DraftTree(
            np.array(tokens, dtype=np.int64), np.array(parents, dtype=np.int64), np.array(depths, dtype=np.int64)
        )

    def accept(self, tree: DraftTree, result: Any, logits: Any) -> None:
        """Index the emitted tokens."""
        self._push([int(t) for t in result.tokens])

    def stats(self) -> Dict[str, Any]:
        return {"lookup_matched_steps": self._matched, "lookup_missed_steps": self._misses}


def make_lookup_drafter(
    model: Any,
    cfg: Any,
    next_seed: Callable[[], int],
    *,
    max_ngram: int = DEFAULT_MAX_NGRAM,
    num_tokens: int = DEFAULT_NUM_TOKENS,
    max_matches: int = DEFAULT_MAX_MATCHES,
    max_nodes: Optional[int] = None,
) -> LookupDrafter:
    """The drafter of ``generate(method="lookup")`` (keywords as :class:`LookupDrafter`;
    ``max_nodes`` defaults to ``max(DEFAULT_MAX_NODES, num_tokens)``)."""
    nodes = max(DEFAULT_MAX_NODES, num_tokens if isinstance(num_tokens, int) else 0) if max_nodes is None else max_nodes
    return LookupDrafter(max_ngram=max_ngram, num_tokens=num_tokens, max_matches=max_matches, max_nodes=nodes)
