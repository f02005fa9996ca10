"""The token-frequency table of a reference corpus (DC-PDD's calibration distribution):
counts kept in Rust (:class:`tokenloom._core.TokenCounts`), built from token ids, texts or
text files, saved and loaded in a small versioned binary format."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Optional, Union

import numpy as np

from tokenloom import _core
from tokenloom._arrays import as_array, as_count

__all__ = ["TokenFrequency", "count_tokens", "read_documents"]

#: The Rust table (counts, smoothed distribution, save / load).
TokenFrequency = _core.TokenCounts


def read_documents(path: Union[str, "os.PathLike[str]"], per_line: bool = False) -> Iterable[str]:
    """The documents of a UTF-8 text file: the whole file, or each non-blank line
    (``per_line``). ``.jsonl`` files give the ``"text"`` field of each line.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a ``.jsonl`` line without a string ``"text"``.
    """
    import json

    p = Path(path)
    text = p.read_text(encoding="utf-8", errors="replace")
    if p.suffix == ".jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                doc = json.loads(line)
                if not isinstance(doc, dict) or not isinstance(doc.get("text"), str):
                    raise ValueError(f"{p}:{n}: expected a JSON object with a string 'text'")
                yield doc["text"]
    elif per_line:
        yield from (line for line in text.splitlines() if line.strip())
    else:
        yield text


def count_tokens(
    vocab_size: int,
    *,
    ids: Optional[Iterable[Any]] = None,
    texts: Optional[Iterable[str]] = None,
    files: Optional[Iterable[Union[str, "os.PathLike[str]"]]] = None,
    tokenizer: Any = None,
    per_line: bool = False,
    max_per_doc: Optional[int] = None,
    into: Optional[Any] = None,
    progress: bool = False,
) -> Any:
    """Count a reference corpus into a :class:`TokenFrequency` (one document per id sequence,
    text, file, or file line with ``per_line``).

    Args:
        vocab_size: ids of the table (the model's logits width).
        ids: token-id sequences (each 1-D).
        texts / files: tokenized with ``tokenizer`` (special tokens included, as the model sees
            them), see :func:`read_documents` for files.
        max_per_doc: count only each document's first tokens (the paper's reference: 1024).
        into: an existing table to add to (default: a new one).
        progress: a progress bar over documents.

    Returns:
        TokenFrequency.

    Raises:
        ValueError: nothing to count, texts without a tokenizer, sizes out of range.
        IndexError: an id outside ``[0, vocab_size)``.
    """
    table = TokenFrequency(vocab_size) if into is None else into
    if max_per_doc is not None:
        max_per_doc = as_count(max_per_doc, "max_per_doc", 1)
    if ids is None and texts is None and files is None:
        raise ValueError("count_tokens: give ids, texts or files")
    if (texts is not None or files is not None) and tokenizer is None:
        raise ValueError("count_tokens: texts and files need a tokenizer")

    def docs() -> Iterable[np.ndarray]:
        for i, x in enumerate(ids or ()):
            yield as_array(x, np.int64, f"ids[{i}]", 1)
        for t in texts or ():
            yield np.asarray(tokenizer(t)["input_ids"], dtype=np.int64)
        for f in files or ():
            for t in read_documents(f, per_line):
                yield np.asarray(tokenizer(t)["input_ids"], dtype=np.int64)

    it = docs()
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="counting", unit="doc")
    for a in it:
        table.add(a, max_per_doc)
    return table
