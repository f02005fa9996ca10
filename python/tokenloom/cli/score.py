"""``tokenloom score ...``: per-text training-data detection scores and frequency tables.

    tokenloom score texts texts.jsonl --freq ref.tlfreq --json out.json   # Min-K%, Min-K%++, DC-PDD
    tokenloom score count corpus/*.txt --out ref.tlfreq --max-per-doc 1024

``texts``: a ``.jsonl`` file (``"text"``, optional ``"label"`` 1 = member / 0 = non-member: the
AUROC of every score is printed then) or a text file, one text per non-blank line. Every flag
and file is checked before the model loads.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, List, Optional, Tuple

from tokenloom.cli.common import add_model_args, count, load_model, number, output_file

__all__ = ["add_parser", "load_texts", "run"]


def add_parser(sub: Any) -> None:
    p = sub.add_parser("score", help="training-data detection scores (Min-K%%, Min-K%%++, DC-PDD), frequency tables",
                       description="texts: per-text Min-K%%, Min-K%%++ (and DC-PDD with --freq) of a .jsonl or "
                       "one-text-per-line file; count: a reference token-frequency table for DC-PDD.")
    p.add_argument("action", choices=["texts", "count"], help="texts (score a file of texts) or count (build a table)")
    p.add_argument("files", nargs="+", help="texts: one file of texts; count: the reference corpus files")
    add_model_args(p)
    p.add_argument("--window", type=count(2), default=512, help="tokens per forward (>= 2, default 512; longer texts slide)")
    p.add_argument("--stride", type=count(1), default=None, help="window shift (>= 1, default window // 2)")
    p.add_argument("--batch-size", type=count(1), default=4, help="windows per forward (>= 1, default 4)")
    p.add_argument("--k", type=number(0.0, 1.0, low_open=True), default=0.2, help="Min-K%% fraction in (0, 1] (default 0.2)")
    p.add_argument("--freq", default=None, help="texts: a token-frequency table from 'score count' (adds DC-PDD)")
    p.add_argument("--a", type=number(0.0, low_open=True), default=0.01, help="DC-PDD clip (> 0, default 0.01)")
    p.add_argument("--json", type=output_file, default=None, help="texts: write the per-text scores to this JSON file")
    p.add_argument("--out", type=output_file, default=None, help="count: where to write the table")
    p.add_argument("--per-line", action="store_true", help="count: each non-blank line is a document")
    p.add_argument("--max-per-doc", type=count(1), default=None, help="count: count only each document's first tokens (>= 1)")
    p.set_defaults(func=run)


def load_texts(path: str) -> Tuple[List[str], Optional[List[int]]]:
    """Texts (and labels, when every record has one) of a ``.jsonl`` or plain text file.

    Raises:
        FileNotFoundError: no such file.
        ValueError: an empty file, a bad record, labels on only some records or not 0 / 1.
    """
    from tokenloom.scores.frequency import read_documents

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if p.suffix != ".jsonl":
        texts = list(read_documents(p, per_line=True))
        labels = None
    else:
        rows = [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
        texts = list(read_documents(p))
        have = [isinstance(r, dict) and "label" in r for r in rows]
        labels = [r["label"] for r in rows] if rows and all(have) else None
        if any(have) and not all(have):
            raise ValueError(f"{path}: 'label' on some records only; give it on all or none")
        if labels is not None and any(lab not in (0, 1) or isinstance(lab, bool) for lab in labels):
            raise ValueError(f"{path}: labels must be 0 (non-member) or 1 (member)")
    if not texts:
        raise ValueError(f"{path}: no texts")
    return texts, labels


def _check(args: argparse.Namespace) -> Any:
    """Everything that needs no model: returns the work's inputs."""
    if args.action == "count":
        if not args.out:
            raise ValueError("count: --out is required")
        for f in args.files:
            if not Path(f).is_file():
                raise FileNotFoundError(f"{f}: no such file")
        return None
    from tokenloom.scores.frequency import TokenFrequency
    from tokenloom.scores.tokens import check_window

    if len(args.files) != 1:
        raise ValueError(f"texts: expected one file of texts, got {len(args.files)}")
    check_window(args.window, args.stride)
    freq = TokenFrequency.load(args.freq) if args.freq else None
    texts, labels = load_texts(args.files[0])
    return texts, labels, freq


def _count(args: argparse.Namespace) -> None:
    from tokenloom.integrations.hf.models import load_default_tokenizer, load_tokenizer
    from tokenloom.scores.frequency import count_tokens

    verbose = bool(getattr(args, "verbose", False))
    tok = load_tokenizer(args.model, verbose=verbose) if args.model else load_default_tokenizer()
    table = count_tokens(
        len(tok), files=args.files, tokenizer=tok, per_line=args.per_line, max_per_doc=args.max_per_doc, progress=True
    )
    table.save(args.out)
    print(f"{table.total} tokens in {table.docs} documents -> {args.out}")


def _texts(args: argparse.Namespace, texts: List[str], labels: Optional[List[int]], freq: Any) -> None:
    from tokenloom.scores.detect import auroc, detection_scores
    from tokenloom.scores.tokens import token_stats, tokenize

    model, tok = load_model(args)
    ids = tokenize(tok, texts)
    short = [i for i, x in enumerate(ids) if x.size < 2]
    if short:
        raise ValueError(f"texts {short[:5]}: fewer than 2 tokens (nothing to score)")
    stats = token_stats(model, ids, window=args.window, stride=args.stride, batch_size=args.batch_size, progress=True)
    rows = detection_scores(stats, freq, k=args.k, a=args.a)
    names = list(rows[0])
    print(f"{'#':>4} {'tokens':>6} " + " ".join(f"{n:>12}" for n in names))
    for i, (r, x) in enumerate(zip(rows, ids)):
        print(f"{i:>4} {x.size:>6} " + " ".join(f"{r[n]:>12.4f}" for n in names))
    result: dict = {"scores": rows, "tokens": [int(x.size) for x in ids], "k": args.k, "a": args.a}
    if labels is not None and 0 < sum(labels) < len(labels):
        result["auroc"] = {n: auroc([r[n] for r in rows], labels) for n in names}
        print("AUROC  " + "  ".join(f"{n} {v:.3f}" for n, v in result["auroc"].items()))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


def run(args: argparse.Namespace) -> int:
    work = _check(args)
    if args.action == "count":
        _count(args)
    else:
        _texts(args, *work)
    return 0
