"""Benchmarks run with pytest-benchmark:

    python -m pytest benches --benchmark-json bench-results/benches.json

Each benchmark group holds a kernel, its pure-Python/NumPy reference and the anchor it competes
with, so the ratios come from one run on one machine. No timing is ever a pass/fail test.
"""
