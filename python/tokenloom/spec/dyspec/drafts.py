"""Draft models for DySpec trees: a separate HF causal LM (:class:`HFDraft`) or the target's
own first layers (:class:`EarlyExitDraft`, self-speculative, no second model).

Both keep a KV cache in step with the committed sequence and evaluate a whole builder
frontier in one forward with a tree attention mask. The protocol of one speculative step::

    draft.start(ids)                          # once: ids = prompt (+ tokens emitted so far)
    tree = builder.build(ids[-1], draft)      # root = last token; draft.expand per depth
    ...                                       # target verifies the tree
    draft.commit(emitted)                     # accepted draft tokens + the bonus token

State: the committed sequence ``s[0..n)``; the cache holds ``s[0..c)`` and the *pending*
tokens ``s[c..n)`` are fed with the next root forward (the last one is the next root). Tree
nodes forwarded by ``expand`` are appended to the cache; ``commit`` keeps those on the
accepted path and drops the rest.

Mask convention (transformers 4.57, see docs/recycling.md, "Mask, position and cache convention"): a 4D additive float mask
[1, 1, q, past + q] (0 = see, dtype min = hide) and ``position_ids = len(s) - 1 + depth``.
Only ``DynamicCache`` is supported (``cache.layers[i].keys / .values`` [B, H, S, D]).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import numpy as np

from tokenloom.runtime.compat import cache_arg
from tokenloom.runtime.earlyexit import early_exit_model
from tokenloom.runtime.model import logits_width

from tokenloom.runtime.kvcache import cache_length, compact_cache
from tokenloom.runtime.treeattn import causal_attention_mask, prefix_tree_mask

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from tokenloom.spec.dyspec.builder import Frontier

__all__ = ["EarlyExitDraft", "HFDraft", "TreeDraft", "check_vocab"]


# Masks come from tokenloom.runtime.treeattn, cache compaction from tokenloom.runtime.kvcache.
def _cache_len(cache: Any) -> int:
    return cache_length(cache) if cache is not None else 0



def check_vocab(draft: Any, target: Any, draft_tokenizer: Any = None, target_tokenizer: Any = None) -> None:
    """Checks that a draft model can propose tokens for a target: same logit width and, when
    both tokenizers are given, the same token -> id map.

    Raises:
        ValueError: the vocabularies differ (the message says how).
    """
    dv, tv = logits_width(draft), logits_width(target)
    if dv != tv:
        raise ValueError(
            f"draft model vocabulary ({dv} logits) differs from the target's ({tv}); "
            "a draft must share the target's tokenizer"
        )
    if draft_tokenizer is not None and target_tokenizer is not None:
        dvoc, tvoc = draft_tokenizer.get_vocab(), target_tokenizer.get_vocab()
        if dvoc != tvoc:
            diff = sorted(set(dvoc.items()) ^ set(tvoc.items()))[:3]
            raise ValueError(
                f"draft tokenizer ({len(dvoc)} tokens) differs from the target's ({len(tvoc)} tokens), "
                f"e.g. {diff}; a draft must share the target's tokenizer"
            )


# --- the shared state machine --------------------------------------------------------------
class TreeDraft:
    """Base class: cache bookkeeping, tree masks, top-k. Subclasses implement :meth:`_forward`.

    Args:
        k: width of the top-k rows :meth:`expand` returns (give at least the builder's k).
        temperature: the draft distribution is ``softmax(logits / temperature)``.
    """

    def __init__(self, k: int = 8, temperature: float = 1.0):
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k: expected an int >= 1, got {k!r}")
        if not (temperature > 0.0):
            raise ValueError(f"temperature: expected > 0, got {temperature!r}")
        self.k = k
        self.temperature = float(temperature)
        self._cache: Any = None
        self._seq_len = 0
        self._pending: List[int] = []
        # Tree state: builder node id -> (cache position, token, parent id); the cache
        # positions of each node's tree ancestors (itself included, the root excluded).
        self._nodes: Dict[int, Tuple[int, int, int]] = {}
        self._anc: Dict[int, List[int]] = {}
        self._children: Dict[Tuple[int, int], int] = {}

    # -- to implement -----------------------------------------------------------------------
    def _new_cache(self) -> Any:
        from transformers import DynamicCache

        return DynamicCache()

    def _forward(self, input_ids: "torch.Tensor", position_ids: "torch.Tensor", mask: Optional["torch.Tensor"]) -> "torch.Tensor":
        """Logits [q, V] for ``input_ids`` [1, q], appending their keys/values to the cache."""
        raise NotImplementedError

    @property
    def device(self) -> Any:
        raise NotImplementedError

    @property
    def dtype(self) -> Any:
        raise NotImplementedError

    # -- state ------------------------------------------------------------------------------
    @property
    def seq_len(self) -> int:
        """Length of the committed sequence (prompt + emitted tokens)."""
        return self._seq_len

    @property
    def cache_len(self) -> int:
        """Positions in the draft cache (committed ones, then forwarded tree nodes)."""
        return _cache_len(self._cache)

    @property
    def pending(self) -> List[int]:
        """Committed tokens not in the cache yet; the last one is the next tree root."""
        return list(self._pending)

    def _reset_tree(self) -> None:
        self._nodes.clear()
        self._anc.clear()
        self._children.clear()

    def prefill(self, *args: Any, **kwargs: Any) -> None:
        """Deprecated name of :meth:`start` (``prefill`` is the :class:`~tokenloom.spec.base.Drafter`'s)."""
        warnings.warn(f"{type(self).__name__}.prefill is deprecated: use start (same arguments)", DeprecationWarning, stacklevel=2)
        self.start(*args, **kwargs)

    def _new_sequence(self, input_ids: Any) -> "torch.Tensor":
        """``input_ids`` as a 1-D LongTensor, checked, with an empty cache and tree for it."""
        import torch

        ids = torch.as_tensor(input_ids, dtype=torch.long).reshape(-1)
        if ids.numel() == 0:
            raise ValueError("input_ids: expected at least one token")
        self._cache = self._new_cache()
        self._reset_tree()
        self._seq_len = int(ids.numel())
        return ids

    def start(self, input_ids: Any) -> None:
        """Start a sequence: cache every token but the last (the first tree root).

        Args:
            input_ids: LongTensor [1, n] or [n] (n >= 1).
        """
        import torch

        ids = self._new_sequence(input_ids)
        self._pending = [int(ids[-1])]
        if ids.numel() > 1:
            head = ids[:-1].view(1, -1).to(self.device)
            pos = torch.arange(head.shape[1], device=self.device).view(1, -1)
            with torch.inference_mode():
                self._forward(head, pos, causal_attention_mask(head.shape[1], 0, self.dtype, self.device))

    def logits(self, frontier: "Frontier") -> "torch.Tensor":
        """Raw draft logits [F, V] at every frontier node, in one forward.

        The root's frontier (``[0]``, right after ``reset``) also feeds the pending tokens;
        deeper frontiers see the committed prefix and their tree ancestors.

        Raises:
            ValueError: no start, a root token that is not the last committed token, a
                node whose parent was never forwarded, a node forwarded twice.
        """
        import torch

        if self._cache is None:
            raise ValueError("draft has no sequence: call start(input_ids) first (formerly prefill)")
        ids = [int(x) for x in np.asarray(frontier.ids).reshape(-1)]
        tokens = [int(x) for x in np.asarray(frontier.tokens).reshape(-1)]
        parents = [int(x) for x in np.asarray(frontier.parents).reshape(-1)]
        depths = [int(x) for x in np.asarray(frontier.depths).reshape(-1)]
        if not ids:
            raise ValueError("frontier is empty: the tree is complete")
        past = self.cache_len
        if parents[0] == -1:
            return self._root_logits(ids, tokens, parents, past)
        extra: List[List[int]] = []
        for n, p in zip(ids, parents):
            if n in self._nodes:
                raise ValueError(f"frontier: node {n} was already forwarded")
            if p not in self._anc:
                raise ValueError(f"frontier: the parent {p} of node {n} was never forwarded")
            extra.append(self._anc[p])
        root_pos = self._seq_len - 1
        dev = self.device
        inp = torch.tensor([tokens], dtype=torch.long, device=dev)
        pos = torch.tensor([[root_pos + d for d in depths]], dtype=torch.long, device=dev)
        mask = prefix_tree_mask(self._seq_len, past, extra, self.dtype, dev)
        with torch.inference_mode():
            out = self._forward(inp, pos, mask)
        for j, (n, t, p) in enumerate(zip(ids, tokens, parents)):
            self._nodes[n] = (past + j, t, p)
            self._anc[n] = self._anc[p] + [past + j]
            self._children[(p, t)] = n
        return out

    def _root_logits(self, ids: List[int], tokens: List[int], parents: List[int], past: int) -> "torch.Tensor":
        import torch

        if len(ids) != 1 or parents[0] != -1:
            raise ValueError(f"frontier: the root must be alone in its frontier, got ids {ids}")
        if not self._pending or tokens[0] != self._pending[-1]:
            want = self._pending[-1] if self._pending else None
            raise ValueError(f"frontier: root token {tokens[0]} is not the last committed token {want}")
        self._reset_tree()
        q = len(self._pending)
        dev = self.device
        inp = torch.tensor([self._pending], dtype=torch.long, device=dev)
        pos = torch.arange(past, past + q, device=dev).view(1, -1)
        mask = causal_attention_mask(q, past, self.dtype, dev)
        with torch.inference_mode():
            out = self._forward(inp, pos, mask)
        self._pending = []
        self._nodes[ids[0]] = (self._seq_len - 1, tokens[0], -1)
        self._anc[ids[0]] = []
        return out[-1:]

    def probs(self, frontier: "Frontier") -> "torch.Tensor":
        """Draft distributions [F, V] (float32) at every frontier node: softmax(logits / T)."""
        import torch

        return torch.softmax(self.logits(frontier).float() / self.temperature, dim=-1)

    def expand(self, frontier: "Frontier") -> Tuple["torch.Tensor", "torch.Tensor"]:
        """Top-``k`` of the draft distribution at every frontier node, in one forward.

        Returns:
            (ids LongTensor [F, k], probs FloatTensor [F, k]) on the host, largest first; feed
            them to ``DynamicTreeBuilder.expand(frontier.ids, ids, probs)``.
        """
        p = self.probs(frontier)
        top = p.topk(min(self.k, p.shape[-1]), dim=-1)
        return top.indices.cpu(), top.values.cpu()

    def commit(self, tokens: Any) -> None:
        """Append the step's emitted tokens (accepted draft tokens, then the bonus token).

        Cache entries of forwarded tree nodes on the accepted path are kept (compacted after
        the prefix); every other tree entry is dropped. Tokens not covered by the cache become
        pending; the last emitted token always does (it is the next root).

        Raises:
            ValueError: no start or no tokens.
        """
        if self._cache is None:
            raise ValueError("draft has no sequence: call start(input_ids) first (formerly prefill)")
        toks = [int(t) for t in np.asarray(tokens.cpu() if hasattr(tokens, "cpu") else tokens).reshape(-1)]
        if not toks:
            raise ValueError("tokens: expected at least one emitted token")
        if self._pending:  # no tree forward since the last commit: nothing to reuse
            self._pending.extend(toks)
        else:
            keep: List[int] = []  # tree entries on the accepted path, relative to the prefix
            cur = next(n for n, v in self._nodes.items() if v[2] == -1)
            matched = 0
            for t in toks[:-1]:
                child = self._children.get((cur, t))
                if child is None:
                    break
                keep.append(self._nodes[child][0] - self._seq_len)
                cur, matched = child, matched + 1
            if self._seq_len + len(keep) != self.cache_len:
                # Tree forwards concatenate, so these tensors are the draft's own (never views
                # of an adopted target cache) and compact_cache may write them in place.
                import torch

                with torch.inference_mode():  # the entries are inference tensors
                    compact_cache(self._cache, self._seq_len, keep)
            self._pending = toks[matched:]
        self._seq_len += len(toks)
        self._reset_tree()


class HFDraft(TreeDraft):
    """A separate Hugging Face causal LM as the draft; it must share the target's tokenizer.

    Args:
        model: the draft causal LM (any model taking a 4D float mask and position ids).
        target: the target model, to check the vocabulary (optional).
        tokenizer / target_tokenizer: both given -> their vocabularies must be equal.
        k, temperature: see :class:`TreeDraft`.

    Raises:
        ValueError: a vocabulary that differs from the target's.
    """

    def __init__(
        self,
        model: Any,
        *,
        target: Any = None,
        tokenizer: Any = None,
        target_tokenizer: Any = None,
        k: int = 8,
        temperature: float = 1.0,
    ):
        super().__init__(k=k, temperature=temperature)
        if target is not None:
            check_vocab(model, target, tokenizer, target_tokenizer)
        elif tokenizer is not None and target_tokenizer is not None:
            check_vocab(model, model, tokenizer, target_tokenizer)
        self.model = model

    @property
    def device(self) -> Any:
        return self.model.device

    @property
    def dtype(self) -> Any:
        return self.model.dtype

    def _forward(self, input_ids: "torch.Tensor", position_ids: "torch.Tensor", mask: Optional["torch.Tensor"]) -> "torch.Tensor":
        import torch

        past = self.cache_len
        cache_position = torch.arange(past, past + input_ids.shape[1], device=input_ids.device)
        out = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=position_ids,
            cache_position=cache_position,
            use_cache=True,
            **cache_arg(self.model, self._cache),
        )
        return out.logits[0]


class EarlyExitDraft(HFDraft):
    """Self-speculative draft: the target's first ``n_layers`` decoder layers, then its final
    norm and lm_head (:func:`~tokenloom.runtime.earlyexit.early_exit_model`, sharing the
    target's weights). No second model and no extra weights.

    The first layers of the target compute the very same keys/values on the same tokens, so
    after the target has run on the committed prefix :meth:`adopt_cache` takes those layers
    from the target's ``DynamicCache`` (views, no copy) instead of recomputing them; the target
    cache must then not be modified in place (DynamicCache only appends / reallocates).

    Supports Llama-style decoders (``model.embed_tokens / layers / norm / rotary_emb``:
    Llama, Mistral, Qwen2, SmolLM, ...).

    Raises:
        ValueError: ``n_layers`` outside [1, number of layers], or an unsupported model.
    """

    def __init__(self, target: Any, n_layers: int, *, k: int = 8, temperature: float = 1.0):
        base = getattr(target, getattr(target, "base_model_prefix", "model"), None)
        needed = ("embed_tokens", "layers", "norm", "rotary_emb")
        if base is None or not all(hasattr(base, a) for a in needed) or not hasattr(target, "lm_head"):
            raise ValueError(
                f"EarlyExitDraft needs a Llama-style decoder ({', '.join(needed)}, lm_head); "
                f"got {type(target).__name__}"
            )
        super().__init__(early_exit_model(target, n_layers), k=k, temperature=temperature)
        self.target = target
        self.n_layers = n_layers

    def start(self, input_ids: Any, target_cache: Any = None) -> None:
        """As :meth:`TreeDraft.start`; with ``target_cache`` (the target's cache after its own
        prefill on the first ``L <= n - 1`` tokens) nothing is computed: the prefix's keys and
        values are adopted (see :meth:`adopt_cache`) and the other tokens stay pending."""
        if target_cache is None:
            super().start(input_ids)
            return
        self._pending = [int(t) for t in self._new_sequence(input_ids)]
        self.adopt_cache(target_cache)

    def adopt_cache(self, target_cache: Any) -> None:
        """Take the committed prefix's keys/values of the first ``n_layers`` layers from the
        target's cache instead of computing them.

        ``target_cache`` must hold the target's keys/values of the first ``L`` committed tokens
        (and nothing else), ``cache_len <= L <= seq_len - 1``: typically right after the target
        verified a step and kept prefix + accepted path, before it sees the bonus token.

        Raises:
            ValueError: no start, a tree forwarded since the last commit, or ``L`` out of range.
        """
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        from tokenloom.runtime.compat import init_cache_layer

        if self._cache is None:
            raise ValueError("draft has no sequence: call start(input_ids) first (formerly prefill)")
        if not self._pending:
            raise ValueError("adopt_cache: call commit(emitted) before adopting the target cache")
        length = _cache_len(target_cache)
        lo, hi = self.cache_len, self._seq_len - 1
        if not (lo <= length <= hi):
            raise ValueError(f"adopt_cache: target cache length {length} is outside [{lo}, {hi}]")
        if len(target_cache.layers) < self.n_layers:
            raise ValueError(f"adopt_cache: target cache has {len(target_cache.layers)} layers, need {self.n_layers}")
        cache = DynamicCache()
        for src in target_cache.layers[: self.n_layers]:
            layer = DynamicLayer()
            init_cache_layer(layer, src.keys[..., :length, :], src.values[..., :length, :])
            cache.layers.append(layer)
        self._pending = self._pending[length - lo :]
        self._cache = cache
