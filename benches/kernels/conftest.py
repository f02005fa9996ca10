"""Benchmarks run with pytest-benchmark:

    python -m pytest benches --benchmark-json bench-results/benches.json

Each benchmark group holds a kernel, its pure-Python/NumPy reference and the anchor it competes
with, so the ratios come from one run on one machine. No timing is ever a pass/fail test.
"""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def source_tokens():
    """Realistic token ids for the token-level kernels: tokenloom's own Python source files
    (sorted by path), each tokenized with the embedded tokenizer, as int64 arrays [n]."""
    import numpy as np

    import tokenloom
    from tokenloom.integrations.hf.models import load_default_tokenizer

    tok = load_default_tokenizer()
    files = sorted(Path(tokenloom.__file__).parent.rglob("*.py"))
    return [np.asarray(tok(f.read_text(encoding="utf-8"))["input_ids"], dtype=np.int64) for f in files]
