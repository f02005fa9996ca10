"""Markdown tables of speed-up ratios from a pytest-benchmark JSON of test_bench_verify.py.

    python benches/experiments/verify_table.py bench-results/verify.json
"""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict


def main(path: str) -> None:
    bench = json.load(open(path))["benchmarks"]
    med = defaultdict(dict)
    for b in bench:
        impl = re.match(r"test_\w+\[(?:\w+-)?(rust|numpy|python|torch)-", b["name"]).group(1)
        med[b["group"]][impl] = b["stats"]["median"]
    rows = defaultdict(dict)
    worst = {}
    for group, m in med.items():
        kind, rest = group.split(" ", 1)
        params = dict(kv.split("=") for kv in rest.split())
        ref = m.get("numpy", m.get("python"))
        cell = f"{m['rust'] * 1e6:.1f} µs · {ref / m['rust']:.1f}× · {m['torch'] / m['rust']:.1f}×"
        rows[(kind, params["B"])][(int(params["T"]), params.get("V", "-"))] = cell
        worst[kind] = min(worst.get(kind, 1e9), ref / m["rust"], m["torch"] / m["rust"])
    for (kind, b), cells in sorted(rows.items()):
        vocabs = sorted({v for _, v in cells}, key=lambda s: (len(s), s))
        print(f"\n**{kind}, B={b}** (cell: Rust median · reference / Rust · torch / Rust)\n")
        print("| T | " + " | ".join(f"V={v}" for v in vocabs) + " |")
        print("|---" * (len(vocabs) + 1) + "|")
        for t in sorted({t for t, _ in cells}):
            print(f"| {t} | " + " | ".join(cells.get((t, v), "") for v in vocabs) + " |")
    print("\nSmallest speed-up per verifier (over both references, all sizes):")
    for kind, w in sorted(worst.items()):
        print(f"- {kind}: {w:.1f}×")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench-results/verify.json")
