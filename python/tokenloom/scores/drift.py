"""Context drift between two models over a conversation (arXiv 2510.07777, "Drift No More?"):
the turn-wise KL divergence ``D_t = KL(q_t || p_t)`` between the next-token distributions of a
*test* model ``q`` and a *reference* model ``p``, teacher-forced on the same conversation.

For every scored message ``t`` (default: the assistant's), ``D_t`` is the mean over the
message's positions of the KL between the two models' predictive distributions, each model
reading the conversation through its own chat template:

* **token level** (both models share a tokenizer): the positions predicting the tokens of the
  message's content and the token right after it (the end of the turn); one forward of the
  whole conversation per model.
* **byte level** (different tokenizers, or ``level="byte"``): the positions before every byte
  of the content and after its last byte (end of turn: the byte distribution's end-of-text
  slot, all special tokens), from :class:`tokenloom.ByteLM`'s exact next-byte distributions
  (257 values), each model conditioned on its own rendering of everything before the content.
  The distributions live on one alphabet whatever the vocabularies, so models with different
  tokenizers compare exactly; with a one-byte-per-token vocabulary the two levels coincide
  position by position (the tests check this).

A model that gives 0 to an outcome the test model does not makes the KL ``inf`` (reported,
never clipped).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["DriftResult", "TurnDrift", "kl_drift", "kl_rows", "message_spans", "render"]


@dataclass
class TurnDrift:
    """The drift of one message.

    Attributes:
        message: index of the message in the conversation.
        role: its role.
        kl: ``D_t``, the mean KL(test || reference) over its positions (nats).
        kl_sum: the sum over positions.
        positions: float64 [m], the KL at every position.
    """

    message: int
    role: str
    kl: float
    kl_sum: float
    positions: np.ndarray


@dataclass
class DriftResult:
    """``level`` ("token" or "byte") and one :class:`TurnDrift` per scored message."""

    level: str
    turns: List[TurnDrift] = field(default_factory=list)

    @property
    def kl(self) -> np.ndarray:
        """float64 [turns]: ``D_t`` per scored message, in order."""
        return np.array([t.kl for t in self.turns], dtype=np.float64)


def kl_rows(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``KL(p_i || q_i)`` for every row of two [N, K] probability arrays (nats): terms with
    ``p = 0`` are 0, a ``q = 0`` under ``p > 0`` gives ``inf``."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if p.shape != q.shape:
        raise ValueError(f"p, q: expected one shape, got {p.shape} and {q.shape}")
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0)
    return terms.sum(-1)


def _check_conversation(conversation: Any) -> List[Dict[str, str]]:
    if isinstance(conversation, (str, bytes)) or not isinstance(conversation, Sequence) or not conversation:
        raise TypeError("conversation: expected a non-empty list of {'role': str, 'content': str} messages")
    for i, m in enumerate(conversation):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise TypeError(f"conversation[{i}]: expected a dict with str 'role' and 'content', got {m!r}")
    return [dict(m) for m in conversation]


def render(tokenizer: Any, messages: List[Dict[str, str]]) -> str:
    """The conversation as the model reads it: the tokenizer's chat template, or (no template)
    ``"{role}: {content}\\n"`` per message."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False)
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages)


def message_spans(tokenizer: Any, messages: List[Dict[str, str]]) -> Tuple[str, List[Tuple[int, int]]]:
    """The rendered conversation and the character span ``[start, end)`` of every message's
    content in it.

    Raises:
        ValueError: the template does not render the conversation prefix by prefix (the
            rendering of the first ``k`` messages is not a prefix of the whole), or a content
            is empty or missing from its rendering.
    """
    full = render(tokenizer, messages)
    spans = []
    for k, m in enumerate(messages):
        part = render(tokenizer, messages[: k + 1])
        if not full.startswith(part):
            raise ValueError(f"the chat template does not render message {k} as a prefix of the whole conversation")
        start = part.rfind(m["content"]) if m["content"] else -1
        if start < 0:
            raise ValueError(f"conversation[{k}]: its content is empty or not in its rendering")
        spans.append((start, start + len(m["content"])))
    return full, spans


def _same_vocab(a: Any, b: Any) -> bool:
    return a is b or (len(a) == len(b) and a.get_vocab() == b.get_vocab())


def kl_drift(
    test_model: Any,
    reference_model: Any,
    conversation: Sequence[Dict[str, str]],
    tokenizer: Any,
    reference_tokenizer: Any = None,
    *,
    roles: Sequence[str] = ("assistant",),
    level: str = "auto",
    progress: bool = False,
) -> DriftResult:
    """Turn-wise drift ``D_t = KL(test || reference)`` over a conversation.

    Args:
        test_model, reference_model: Hugging Face causal LMs (CPU for the byte level).
        conversation: ``[{"role": ..., "content": ...}, ...]``, the transcript both read.
        tokenizer: the test model's tokenizer; reference_tokenizer: the reference's (default:
            the same).
        roles: which messages are scored (default the assistant's).
        level: ``"token"`` (needs one vocabulary), ``"byte"``, or ``"auto"`` (token when the
            vocabularies are equal).
        progress: a progress bar over scored messages (byte level).

    Returns:
        DriftResult: ``.kl`` [turns] and per-position values.

    Raises:
        TypeError: a malformed conversation.
        ValueError: an unknown level, token level with different vocabularies, no message of
            the scored roles, a template that is not prefix-stable.
    """
    messages = _check_conversation(conversation)
    ref_tok = tokenizer if reference_tokenizer is None else reference_tokenizer
    same = _same_vocab(tokenizer, ref_tok)
    if level not in ("auto", "token", "byte"):
        raise ValueError(f"level: expected 'auto', 'token' or 'byte', got {level!r}")
    if level == "token" and not same:
        raise ValueError("level='token' needs one vocabulary; the tokenizers differ (use level='byte')")
    if isinstance(roles, str):
        roles = (roles,)
    scored = [k for k, m in enumerate(messages) if m["role"] in roles]
    if not scored:
        raise ValueError(f"no message with a role in {list(roles)}")
    if level == "token" or (level == "auto" and same):
        return _token_level(test_model, reference_model, messages, tokenizer, scored)
    return _byte_level(test_model, reference_model, messages, tokenizer, ref_tok, scored, progress)


def _turn(k: int, messages: List[Dict[str, str]], kl: np.ndarray) -> TurnDrift:
    return TurnDrift(message=k, role=messages[k]["role"], kl=float(kl.mean()), kl_sum=float(kl.sum()), positions=kl)


def _token_level(a: Any, b: Any, messages: List[Dict[str, str]], tok: Any, scored: List[int]) -> DriftResult:
    import torch

    full, spans = message_spans(tok, messages)
    enc = tok(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = torch.tensor([enc["input_ids"]], dtype=torch.long)
    offsets = enc["offset_mapping"]
    n = len(tok)
    with torch.inference_mode():
        la = torch.log_softmax(a(input_ids=ids).logits[0, :, :n].double(), -1)
        lb = torch.log_softmax(b(input_ids=ids).logits[0, :, :n].double(), -1)
    out = DriftResult(level="token")
    for k in scored:
        cs, ce = spans[k]
        inside = [j for j, (s, e) in enumerate(offsets) if e > cs and s < ce]
        if not inside or inside[0] == 0:
            raise ValueError(f"conversation[{k}]: its content has no token with a preceding context")
        rows = inside + ([inside[-1] + 1] if inside[-1] + 1 < ids.shape[1] else [])
        pa, lpa, lpb = la[[r - 1 for r in rows]].exp(), la[[r - 1 for r in rows]], lb[[r - 1 for r in rows]]
        kl = torch.where(pa > 0, pa * (lpa - lpb), torch.zeros_like(pa)).sum(-1)
        out.turns.append(_turn(k, messages, kl.numpy()))
    return out


def _byte_level(
    a: Any, b: Any, messages: List[Dict[str, str]], tok_a: Any, tok_b: Any, scored: List[int], progress: bool
) -> DriftResult:
    from tokenloom.bytelevel.lm import ByteLM
    from tokenloom.bytelevel.vocab import ByteVocab
    from tokenloom.runtime.model import logits_width

    sides = []
    for model, tok in ((a, tok_a), (b, tok_b)):
        full, spans = message_spans(tok, messages)
        sides.append((model, tok, ByteVocab.from_tokenizer(tok, vocab_size=logits_width(model)), full, spans))
    it: Any = scored
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(scored, desc="drift", unit="turn")
    out = DriftResult(level="byte")
    for k in it:
        content = messages[k]["content"].encode("utf-8")
        dists = []
        for model, tok, vocab, full, spans in sides:
            ctx = tok(full[: spans[k][0]], add_special_tokens=False)["input_ids"]
            lm = ByteLM(model, tok, canonical=vocab.canonical_ok, vocab=vocab, context_ids=ctx)
            dists.append(np.stack([lm.next_byte_probs(content[:i]) for i in range(len(content) + 1)]))
        out.turns.append(_turn(k, messages, kl_rows(dists[0], dists[1])))
    return out
