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
    check_wheel_contents(wheel)
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


def elf_section_names(data: bytes) -> list:
    """Section names of a 64-bit little-endian ELF file (enough to see whether it is stripped)."""
    import struct

    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, "a 64-bit little-endian ELF"
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    def section(i):
        return struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize)
    strtab = section(shstrndx)
    names = []
    for i in range(shnum):
        name_off = section(i)[0]
        start = strtab[4] + name_off
        names.append(data[start:data.index(b"\0", start)].decode())
    return names


def check_wheel_contents(wheel: Path) -> None:
    """The Apache-2.0 text in the wheel's metadata, the data sets' own licenses, and a
    stripped extension (no symbol table; ``strip = true`` in pyproject's [tool.maturin])."""
    import zipfile

    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        lic = [n for n in names if ".dist-info/" in n and n.rsplit("/", 1)[-1] == "LICENSE"]
        assert lic, names
        assert "Apache License" in z.read(lic[0]).decode() and "Version 2.0" in z.read(lic[0]).decode()
        assert "tokenloom/data/spec_bench/LICENSE" in names and "tokenloom/data/humaneval/LICENSE" in names
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        assert "License-Expression: Apache-2.0" in meta or "License: Apache-2.0" in meta
        (so,) = [n for n in names if n.startswith("tokenloom/_core") and n.endswith(".so")] or [None]
        if so is not None and sys.platform.startswith("linux"):
            assert ".symtab" not in elf_section_names(z.read(so)), "the release extension is not stripped"


def test_license_in_repo_and_sdist(tmp_path):
    import shutil
    import tarfile

    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
    maturin = shutil.which("maturin")
    if maturin is None:
        pytest.skip("maturin is not installed (the sdist is built with it)")
    subprocess.run([maturin, "sdist", "-o", str(tmp_path)], cwd=ROOT, check=True, capture_output=True, timeout=600)
    (sdist,) = tmp_path.glob("tokenloom-*.tar.gz")
    with tarfile.open(sdist) as t:
        names = t.getnames()
    assert any(n.count("/") == 1 and n.endswith("/LICENSE") for n in names), names
