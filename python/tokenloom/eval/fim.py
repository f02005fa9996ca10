"""Prompts that end mid-token, on HumanEval (164 problems, MIT; bundled with its license).

Each problem's prompt + canonical solution is cut at a seeded random byte position inside the
solution (on a line with something left to write). Three ways to continue are compared on the
same cuts:

- ``token``: plain token-level prompting (tokenize the cut prompt, greedy tokens);
- ``heal``: HF token healing (``generate(token_healing=True)``: backs up the last token and
  constrains the regenerated one to start with its text);
- ``byte``: ``ByteLM`` greedy bytes (exact byte-level argmax). The text before the cut line
  is given to it as tokens (its canonical encoding ends with a newline) and the cut line's bytes
  are handled exactly; exact expansion of a whole 500-byte prompt is too slow on 2 CPU cores.

Metrics: log-likelihood (nats) of the true rest of the line (``token``: log P(continuation
tokens | prompt tokens); ``byte``: log P(continuation bytes | prompt bytes); not defined for
healing), and exact match of the greedy completion of the rest of the line.
"""

from __future__ import annotations

import copy
import gzip
import json
import math
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

__all__ = [
    "Cut", "METHODS", "check_methods", "format_table", "load_humaneval", "make_cuts", "plot", "run_fim", "write_json",
]

METHODS = ("token", "heal", "byte")
DATA = Path(__file__).parent.parent / "data" / "humaneval" / "HumanEval.jsonl.gz"


def load_humaneval(path: Optional[Path] = None) -> List[Dict[str, Any]]:
    with gzip.open(path or DATA, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@dataclass
class Cut:
    task_id: str
    prefix: bytes
    target: bytes  # the rest of the line, without the newline


def make_cuts(problems: List[Dict[str, Any]], n: int, seed: int = 0) -> List[Cut]:
    """One cut per problem (the first ``n``), at a random byte inside the canonical solution
    whose line still has non-blank text after it."""
    rng = random.Random(seed)
    cuts = []
    for p in problems[:n]:
        full = (p["prompt"] + p["canonical_solution"]).encode()
        start = len(p["prompt"].encode())
        ok = []
        for i in range(start, len(full)):
            line_end = full.find(b"\n", i)
            rest = full[i : line_end if line_end >= 0 else len(full)]
            if rest.strip() and full[:i].strip() and full[i - 1 : i] != b"\n":
                ok.append(i)
        if not ok:
            continue
        i = rng.choice(ok)
        line_end = full.find(b"\n", i)
        cuts.append(Cut(p["task_id"], full[:i], full[i : line_end if line_end >= 0 else len(full)]))
    return cuts


@dataclass
class Scores:
    loglik: List[float] = field(default_factory=list)
    exact: List[bool] = field(default_factory=list)
    #: prompts where the method itself failed (counted as not matching)
    errors: int = 0

    def summary(self) -> Dict[str, Optional[float]]:
        ll = [x for x in self.loglik if math.isfinite(x)]
        return {
            "n": len(self.exact),
            "exact_match": sum(self.exact) / len(self.exact) if self.exact else None,
            "mean_loglik": sum(ll) / len(ll) if ll else None,
            "loglik_-inf": len(self.loglik) - len(ll),
            "errors": self.errors,
        }


class _MethodError(RuntimeError):
    """A baseline method failed on one prompt (recorded, not fatal)."""


def _line(text: bytes) -> bytes:
    return text.split(b"\n", 1)[0]


def _token_method(model: Any, tok: Any, cut: Cut, heal: bool) -> tuple:
    import torch

    text = cut.prefix.decode("utf-8", errors="ignore")
    enc = tok(text, return_tensors="pt")
    ids = enc.input_ids
    n_new = max(8, len(cut.target) // 2 + 8)
    kw: Dict[str, Any] = dict(max_new_tokens=n_new, do_sample=False, pad_token_id=tok.eos_token_id or 0)
    if heal:
        if tok.pad_token is None:  # token healing pads its prompt internally
            tok = copy.copy(tok)
            tok.pad_token = tok.eos_token
        try:
            out = model.generate(ids, attention_mask=enc.attention_mask, token_healing=True, tokenizer=tok, **kw)
        except (KeyError, IndexError, ValueError) as e:
            # transformers' heal_tokens raises on some prompts (e.g. KeyError in its sequence
            # bias table): the method fails on this prompt; the run goes on.
            raise _MethodError(f"token healing failed: {type(e).__name__}: {e}") from e
        # Healing rewrites the prompt's last token: compare the whole cut line.
        full = tok.decode(out[0], skip_special_tokens=True).encode()
        k = cut.prefix.count(b"\n")
        lines = full.split(b"\n")
        want = (cut.prefix + cut.target).split(b"\n")[k]
        return math.nan, len(lines) > k and lines[k] == want
    out = model.generate(ids, attention_mask=enc.attention_mask, **kw)
    gen = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True).encode()
    cont = tok(cut.target.decode(), add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(torch.cat([ids, cont], 1)).logits[0].double()
    lp = torch.log_softmax(logits[ids.shape[1] - 1 : -1], -1)
    ll = float(lp[torch.arange(cont.shape[1]), cont[0]].sum())
    return ll, _line(gen) == cut.target


def _byte_method(model: Any, tok: Any, vocab: Any, cut: Cut) -> tuple:
    """ByteLM on the cut line only: the text before the line start is given as tokens (its
    canonical encoding, a boundary every cover shares up to the newline), the line's bytes are
    handled exactly."""
    from tokenloom.bytelevel.lm import ByteLM

    k = cut.prefix.rfind(b"\n") + 1
    head, tail = cut.prefix[:k], cut.prefix[k:]
    ctx = list(vocab.prefix_ids) + (tok(head.decode(), add_special_tokens=False)["input_ids"] if head else [])
    lm = ByteLM(model, tok, canonical=True, vocab=vocab, context_ids=ctx)
    gen = lm.generate(tail, len(cut.target) + 4, stop_bytes=b"\n")
    ll = lm.logprob(tail + cut.target) - lm.logprob(tail)
    return ll, _line(gen) == cut.target


def check_methods(methods: Sequence[str]) -> List[str]:
    """``methods`` as a list, checked against :data:`METHODS`.

    Raises:
        ValueError: no method, an unknown one or one twice.
    """
    methods = list(methods)
    unknown = [m for m in methods if m not in METHODS]
    if not methods or unknown or len(set(methods)) != len(methods):
        raise ValueError(f"methods: expected distinct names from {list(METHODS)}, got {methods}")
    return methods


def run_fim(
    model: Any, tok: Any, cuts: List[Cut], methods: Sequence[str] = METHODS, progress: bool = True
) -> Dict[str, Dict[str, Any]]:
    """Every method on every cut: ``{method: {n, exact_match, mean_loglik, loglik_-inf, errors}}``."""
    methods = check_methods(methods)
    from tokenloom.runtime.model import logits_width
    from tokenloom.bytelevel.vocab import ByteVocab

    scores = {m: Scores() for m in methods}
    vocab = ByteVocab.from_tokenizer(tok, vocab_size=logits_width(model)) if "byte" in methods else None
    it: Iterator[Cut] = iter(cuts)
    if progress:
        from tqdm import tqdm

        it = iter(tqdm(cuts, desc="fim", unit="prompt"))
    for cut in it:
        for m in methods:
            if m == "byte":
                ll, ok = _byte_method(model, tok, vocab, cut)
            else:
                try:
                    ll, ok = _token_method(model, tok, cut, heal=(m == "heal"))
                except _MethodError as e:
                    warnings.warn(f"fim: {m} on problem {cut.task_id}: {e}", RuntimeWarning, stacklevel=2)
                    scores[m].errors += 1
                    ll, ok = math.nan, False
            scores[m].loglik.append(ll)
            scores[m].exact.append(bool(ok))
    return {m: s.summary() for m, s in scores.items()}


def format_table(results: Dict[str, Dict[str, Any]]) -> str:
    """The summary of :func:`run_fim` as a text table."""
    lines = [f"{'method':<8} {'n':>4} {'exact match':>12} {'mean loglik':>12} {'errors':>7}"]
    for m, r in results.items():
        em = "-" if r["exact_match"] is None else f"{r['exact_match']:.3f}"
        ll = "-" if r["mean_loglik"] is None else f"{r['mean_loglik']:.3f}"
        lines.append(f"{m:<8} {r['n']:>4} {em:>12} {ll:>12} {r['errors']:>7}")
    return "\n".join(lines)


def write_json(path: str, results: Dict[str, Dict[str, Any]], problems: int, seed: int) -> None:
    """``{"problems", "seed", "results"}`` to ``path``."""
    with open(path, "w") as f:
        json.dump({"problems": problems, "seed": seed, "results": results}, f, indent=2)


def plot(results: Dict[str, Dict[str, Any]], path: str, problems: int, seed: int) -> None:
    """A PNG: exact match and mean log-likelihood per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(8, 3))
    names = list(results)
    ax[0].bar(names, [results[m]["exact_match"] or 0 for m in names])
    ax[0].set_title("exact match, rest of line")
    lls = [m for m in names if results[m]["mean_loglik"] is not None]
    ax[1].bar(lls, [results[m]["mean_loglik"] for m in lls])
    ax[1].set_title("mean log-likelihood (nats)")
    fig.suptitle(f"HumanEval prompts cut mid-token (n={problems}, seed={seed})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
