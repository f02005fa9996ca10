"""Prompt ids for a chat model: the user message through the tokenizer's chat template."""

from __future__ import annotations

from typing import Any

from tokenloom.runtime.compat import chat_ids

__all__ = ["chat_input_ids"]


def chat_input_ids(tokenizer: Any, prompt: str, chat: bool = True) -> Any:
    """Token ids LongTensor [1, n] of ``prompt``: chat-templated (one user turn, generation
    prompt added) when ``chat`` and the tokenizer has a template, else the raw text's ids.

    Raises:
        TypeError: ``prompt`` is not a str.
    """
    if not isinstance(prompt, str):
        raise TypeError(f"prompt: expected a str, got {type(prompt).__name__}")
    if chat and getattr(tokenizer, "chat_template", None):
        return chat_ids(tokenizer, [{"role": "user", "content": prompt}])
    return tokenizer(prompt, return_tensors="pt").input_ids
