"""The hand-written stubs of ``tokenloom._core`` match the compiled module (mypy.stubtest)."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_core_stubs_match_extension():
    pytest.importorskip("mypy")
    proc = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "tokenloom._core"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
