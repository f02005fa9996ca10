"""ByteLM look-ahead sweep: seconds for the next-byte distributions and greedy bytes on the
prefixes and continuations of the last genlm-bytes comparison, for several ``lookahead`` values
(rows per batched forward; 0 = off). Results are exact for every value; only time and forwards
change.

    PYTHONPATH=python python benches/experiments/bytes_lookahead_sweep.py 0,8,12,16
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main() -> int:
    import torch

    from tokenloom import ByteLM, ByteVocab
    from tokenloom.integrations.hf.models import load_default

    values = [int(x) for x in (sys.argv[1] if len(sys.argv) > 1 else "0,8").split(",")]
    torch.set_num_threads(2)
    model, tok = load_default()
    vocab = ByteVocab.from_tokenizer(tok)
    bos = int(tok.bos_token_id)
    rows = json.loads((ROOT / "benches" / "results" / "genlm_compare.json").read_text())["rows"]
    items = [(r["prefix"].encode(), r["cont"].encode()) for r in rows]
    for la in values:
        t_probs = t_greedy = 0.0
        fwd_probs = fwd_greedy = 0
        for prefix, cont in items:
            lm = ByteLM(model, tok, vocab=vocab, context_ids=[bos], lookahead=la)
            lm.next_byte_probs(prefix)
            f0 = lm.forwards
            t = time.perf_counter()
            for i in range(len(cont) + 1):
                lm.next_byte_probs(prefix + cont[:i])
            t_probs += time.perf_counter() - t
            fwd_probs += lm.forwards - f0
            lm = ByteLM(model, tok, vocab=vocab, context_ids=[bos], lookahead=la)
            lm.next_byte_probs(prefix)
            f0 = lm.forwards
            t = time.perf_counter()
            lm.generate(prefix, 48, stop_at_eos=False)
            t_greedy += time.perf_counter() - t
            fwd_greedy += lm.forwards - f0
        print(f"lookahead={la:3d}  probs {t_probs:6.2f} s ({fwd_probs} forwards)  greedy {t_greedy:6.2f} s ({fwd_greedy} forwards)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
