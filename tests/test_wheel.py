"""`pip wheel .` builds an installable wheel: install it into a fresh virtual environment
(only numpy comes along) and use it there."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not (ROOT / "pyproject.toml").is_file(), reason="needs the source tree")
def test_wheel_installs_into_fresh_venv(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-w", str(wheels), "-q"],
        check=True,
        timeout=1800,
    )
    (wheel,) = wheels.glob("tokenloom-*.whl")
    env_dir = tmp_path / "env"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", str(wheel)], check=True, timeout=900)
    code = (
        "import tokenloom, numpy as np\n"
        "r = tokenloom.verify_greedy([-1, 0, 1], [0, 5, 6], [5, 6, 7])\n"
        "assert r.tokens.tolist() == [5, 6, 7], r\n"
        "import importlib.resources as ir\n"
        "assert (ir.files('tokenloom') / 'py.typed').is_file()\n"
        "assert (ir.files('tokenloom') / '_core.pyi').is_file()\n"
        "print(tokenloom.__version__)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    out = subprocess.run([str(py), "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0.1.0"
