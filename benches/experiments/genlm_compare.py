"""ByteLM vs genlm-bytes on the embedded model, in one process: bytes/s of greedy byte generation
and of next-byte distributions, and each method's total-variation (TV) distance to the exact
next-byte distribution.

genlm-bytes is a benchmark-only dependency and needs another transformers than tokenloom's
extra, so this runs in its own virtual environment that reuses the system's torch
(docs/bytes.md, "genlm-bytes comparison")::

    python -m venv --system-site-packages .venv-genlm
    .venv-genlm/bin/pip install --no-deps genlm-bytes==0.2.0 genlm-backend==0.3.1
    .venv-genlm/bin/pip install arsenal numba
    PYTHONPATH=python .venv-genlm/bin/python benches/experiments/genlm_compare.py --json benches/results/genlm_compare.json

Exactness reference: ByteLM(canonical=False) sums ALL covers, which is what genlm-bytes
approximates with its pruned beam; it is exact but exponential in the prefix length, so it is
computed only on prefixes it can afford (``--all-covers-max``) and TV to the canonical exact
distribution (ByteLM's default, what a deterministic tokenizer gives) is reported for every
prefix. Both methods condition on the same single context token (the tokenizer's BOS), TV is
over the 256 byte values (each distribution renormalised over them; genlm-bytes' end-of-text
entries are left out). Every ByteLM shares one ByteVocab (as an application would), so the
vocabulary tables and allowed-next-token masks are built once; token distributions are never
shared between the timed runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def prefixes(n_code: int, n_text: int, seed: int) -> List[bytes]:
    """Byte prefixes ending at random byte positions (often mid-token): a HumanEval solution
    line cut at a random byte, and Spec-Bench questions cut inside the text."""
    rng = random.Random(seed)
    data = ROOT / "python" / "tokenloom" / "data"
    from tokenloom.eval.fim import load_humaneval

    he = load_humaneval()
    sb = [json.loads(line) for line in (data / "spec_bench" / "question.jsonl").read_text().splitlines() if line.strip()]
    out: List[bytes] = []
    for p in rng.sample(he, n_code):
        # The line of the canonical solution holding the cut, from its start (indentation
        # included) to the cut: long multi-line code prefixes make the exact cover count explode
        # (indentation runs have several pairwise-canonical splits each; see docs/bytes.md).
        sol = p["canonical_solution"].encode()
        lines = [ln for ln in sol.split(b"\n") if len(ln.strip()) >= 8]
        line = lines[rng.randrange(len(lines))]
        cut = rng.randrange(len(line) - len(line.lstrip()) + 4, len(line) + 1)
        out.append(line[:cut])
    for q in rng.sample(sb, n_text):
        text = q["turns"][0].encode()
        cut = rng.randrange(16, max(17, min(len(text), 48)))
        out.append(text[:cut])
    return out


def tv(p: np.ndarray, q: np.ndarray) -> float:
    p = np.asarray(p[:256], dtype=np.float64)
    q = np.asarray(q[:256], dtype=np.float64)
    return 0.5 * float(np.abs(p / p.sum() - q / q.sum()).sum())


def genlm_dist(lazy: Any) -> np.ndarray:
    return np.exp(np.asarray(lazy.ps, dtype=np.float64))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-code", type=int, default=4)
    ap.add_argument("--n-text", type=int, default=4)
    ap.add_argument("--cont-bytes", type=int, default=16, help="next-byte distributions after each of these bytes")
    ap.add_argument("--greedy-bytes", type=int, default=48)
    ap.add_argument("--K", type=int, default=5)
    ap.add_argument("--threshold", type=float, default=0.05)
    ap.add_argument("--all-covers-max", type=int, default=24, help="longest prefix+cont scored with all covers")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import torch
    from genlm.backend.llm import AsyncTransformer
    from tqdm import tqdm

    from tokenloom import ByteLM
    from tokenloom.integrations.hf.models import load_default

    torch.set_num_threads(args.threads)
    model, tok = load_default()
    bos = int(tok.bos_token_id)
    t0 = time.perf_counter()
    llm = AsyncTransformer(model, tok)
    t_llm = time.perf_counter() - t0
    # genlm-backend 0.3.1 reads this GGUF tokenizer's byte-level tokens as the UTF-8 of their
    # printed form ('Ġfib' -> b'\xc4\xa0fib' instead of b' fib'), so its beam dies at the first
    # space. Give it the exact token bytes (tokenloom.ByteVocab); special tokens keep its own.
    from genlm.backend.tokenization import Token

    from tokenloom import ByteVocab

    bv = ByteVocab.from_tokenizer(tok)
    fixed = 0
    for i, t in enumerate(llm.byte_vocab):
        if i < len(bv.token_bytes) and bv.token_bytes[i] and t.byte_string != bv.token_bytes[i]:
            llm.byte_vocab[i] = Token(token_id=t.token_id, byte_string=bv.token_bytes[i])
            fixed += 1

    rows: List[Dict[str, Any]] = []
    items = prefixes(args.n_code, args.n_text, args.seed)
    rng = random.Random(args.seed + 1)
    def one_prefix(prefix: bytes) -> Dict[str, Any]:
        # The continuation: what ByteLM greedy would write (a realistic path for both methods).
        ours = ByteLM(model, tok, canonical=True, vocab=bv, context_ids=[bos])
        cont = ours.generate(prefix, args.cont_bytes, stop_at_eos=False)
        if len(cont) < args.cont_bytes:
            cont = cont + bytes(rng.randrange(97, 123) for _ in range(args.cont_bytes - len(cont)))
        row: Dict[str, Any] = {"prefix": prefix.decode("utf-8", "replace"), "cont": cont.decode("utf-8", "replace")}

        # ByteLM (canonical, packed linears = the default) next-byte distributions + greedy.
        for label, pack in (("bytelm", "auto"), ("bytelm_unpacked", False)):
            lm = ByteLM(model, tok, canonical=True, vocab=bv, context_ids=[bos], pack=pack)
            t = time.perf_counter()
            lm.next_byte_probs(prefix)
            row[f"{label}_prefill_s"] = time.perf_counter() - t
            t = time.perf_counter()
            dists = [lm.next_byte_probs(prefix + cont[:i]) for i in range(len(cont) + 1)]
            row[f"{label}_probs_s"] = time.perf_counter() - t
            f0 = lm.forwards
            lm2 = ByteLM(model, tok, canonical=True, vocab=bv, context_ids=[bos], pack=pack)
            lm2.next_byte_probs(prefix)
            t = time.perf_counter()
            g = lm2.generate(prefix, args.greedy_bytes, stop_at_eos=False)
            row[f"{label}_greedy_s"] = time.perf_counter() - t
            row[f"{label}_greedy_n"] = len(g)
            row[f"{label}_forwards"] = f0
            if label == "bytelm":
                canon = dists
                row["bytelm_greedy"] = g.decode("utf-8", "replace")

        # Exact all-covers distributions where affordable.
        allc = None
        if len(prefix) + len(cont) <= args.all_covers_max:
            try:
                lm = ByteLM(model, tok, canonical=False, vocab=bv, context_ids=[bos], max_paths=1 << 16)
                allc = [lm.next_byte_probs(prefix + cont[:i]) for i in range(len(cont) + 1)]
            except ValueError as e:  # too many live covers
                row["all_covers_error"] = str(e)

        # genlm-bytes.
        async def go() -> Dict[str, Any]:
            from genlm.bytes import BeamParams, ByteBeamState

            params = BeamParams(K=args.K, prune_threshold=args.threshold)
            out: Dict[str, Any] = {}
            t = time.perf_counter()
            beam = await ByteBeamState.initial(llm, params)
            beam = await beam.prefill(prefix)
            out["prefill_s"] = time.perf_counter() - t
            t = time.perf_counter()
            state, dists = beam, []
            for i in range(len(cont) + 1):
                dists.append(genlm_dist(await state.logp_next()))
                if i < len(cont):
                    state = await (state.prune() << cont[i])
            out["probs_s"] = time.perf_counter() - t
            out["dists"] = dists
            llm.clear_cache()
            beam = await (await ByteBeamState.initial(llm, params)).prefill(prefix)
            t = time.perf_counter()
            state, g = beam, bytearray()
            for _ in range(args.greedy_bytes):
                q = genlm_dist(await state.logp_next())
                b = int(np.argmax(q[:256]))
                g.append(b)
                state = await (state.prune() << b)
            out["greedy_s"] = time.perf_counter() - t
            out["greedy"] = bytes(g)
            llm.clear_cache()
            return out

        gen = asyncio.run(go())
        row["genlm_prefill_s"] = gen["prefill_s"]
        row["genlm_probs_s"] = gen["probs_s"]
        row["genlm_greedy_s"] = gen["greedy_s"]
        row["genlm_greedy_n"] = len(gen["greedy"])
        row["genlm_greedy"] = gen["greedy"].decode("utf-8", "replace")
        row["tv_genlm_canonical"] = [tv(a, b) for a, b in zip(gen["dists"], canon)]
        if allc is not None:
            row["tv_genlm_all"] = [tv(a, b) for a, b in zip(gen["dists"], allc)]
            row["tv_canonical_all"] = [tv(a, b) for a, b in zip(canon, allc)]
        return row

    skipped: List[Dict[str, str]] = []
    for prefix in tqdm(items, desc="prefixes", file=sys.stderr):
        try:
            rows.append(one_prefix(prefix))
        except ValueError as e:  # e.g. more live exact paths than max_paths: reported, not hidden
            skipped.append({"prefix": prefix.decode("utf-8", "replace"), "error": str(e)})
            print(f"skipped {prefix!r}: {e}", file=sys.stderr)


    n_probs = len(rows) * (args.cont_bytes + 1)
    summary = {
        "greedy_bytes_per_s": {m: sum(r[f"{m}_greedy_n"] for r in rows) / sum(r[f"{m}_greedy_s"] for r in rows) for m in ("bytelm", "bytelm_unpacked", "genlm")},
        "probs_per_s": {m: n_probs / sum(r[f"{m}_probs_s"] for r in rows) for m in ("bytelm", "bytelm_unpacked", "genlm")},
        "prefill_s_mean": {m: float(np.mean([r[f"{m}_prefill_s"] for r in rows])) for m in ("bytelm", "bytelm_unpacked", "genlm")},
        "tv_genlm_canonical_max": max(max(r["tv_genlm_canonical"]) for r in rows),
        "tv_genlm_canonical_mean": float(np.mean([x for r in rows for x in r["tv_genlm_canonical"]])),
        "tv_genlm_all_max": max((max(r["tv_genlm_all"]) for r in rows if "tv_genlm_all" in r), default=None),
        "tv_canonical_all_max": max((max(r["tv_canonical_all"]) for r in rows if "tv_canonical_all" in r), default=None),
        "prefixes_with_all_covers": sum("tv_genlm_all" in r for r in rows),
        "greedy_same_text": sum(r["bytelm_greedy"] == r["genlm_greedy"] for r in rows),
        "genlm_setup_s": t_llm,
        "genlm_byte_vocab_fixed_tokens": fixed,
        "prefixes": len(rows),
        "skipped": skipped,
    }
    meta = {
        "command": "python " + " ".join(sys.argv),
        "machine": f"{platform.machine()} cpus={__import__('os').cpu_count()} torch_threads={torch.get_num_threads()}",
        "genlm_bytes": __import__("importlib.metadata").metadata.version("genlm-bytes"),
        "genlm_backend": __import__("importlib.metadata").metadata.version("genlm-backend"),
        "K": args.K,
        "threshold": args.threshold,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    print(json.dumps(summary, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "summary": summary, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
