"""Every ```python block of README.md and docs/*.md runs.

Each block runs on its own (fresh namespace, a temporary working directory), so a block must be
complete: imports, inputs and all. An HTML comment on the line right before the opening fence
changes how a block is run:

* ``<!-- model -->``: the block loads the embedded SmolLM2-135M-Instruct; it carries the
  ``model`` mark (deselect with ``-m "not model"``). A block that calls ``load_default`` without
  this marker fails, so the fast suite never loads the model by accident.
* ``<!-- no-run: REASON -->``: the block is shown, not run (skipped with REASON). Use sparingly.
"""

from __future__ import annotations

import importlib
import linecache
import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import pytest

ROOT = Path(__file__).resolve().parent.parent
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = re.compile(r"^<!--\s*(model|no-run)(?::\s*(.*?))?\s*-->$")
NEEDS_MODEL = re.compile(r"\bload_default\b|\bload_or_default\b|\bmodels\.load\(")


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    code: str
    marker: Optional[str]
    reason: str

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def python_blocks(path: Path) -> List[Block]:
    """The ```python blocks of a Markdown file, with the marker comment right before each."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start = i
            j = i + 1
            while j < len(lines) and lines[j].strip() != "```":
                j += 1
            if j == len(lines):
                raise ValueError(f"{path}:{start + 1}: unclosed ```python block")
            prev = lines[start - 1].strip() if start else ""
            m = MARKER.match(prev)
            blocks.append(Block(path, start + 1, "\n".join(lines[start + 1 : j]) + "\n",
                                m.group(1) if m else None, (m.group(2) or "") if m else ""))
            i = j + 1
        else:
            i += 1
    return blocks


BLOCKS = [b for f in FILES for b in python_blocks(f)]


def _param(b: Block):
    marks = []
    if b.marker == "model":
        marks.append(pytest.mark.model)
    elif b.marker == "no-run":
        marks.append(pytest.mark.skip(reason=f"<!-- no-run -->: {b.reason or 'no reason given'}"))
    return pytest.param(b, id=b.id, marks=marks)


def test_blocks_found():
    assert len(BLOCKS) >= 8 and any(b.path.name == "README.md" for b in BLOCKS)


DOTTED = re.compile(r"\btokenloom(?:\.[A-Za-z_][A-Za-z0-9_]*)+")


def _resolves(dotted: str) -> bool:
    """``a.b.c`` is a module, or attributes of the longest importable module prefix."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for name in parts[i:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_module_paths_exist(path):
    """Every ``tokenloom.x.y`` a page names exists (docs follow the package layout)."""
    text = path.read_text(encoding="utf-8")
    missing = sorted({m.group(0) for m in DOTTED.finditer(text) if not _resolves(m.group(0))})
    assert not missing, f"{path.name} names what does not exist: {missing}"


@pytest.mark.parametrize("block", [_param(b) for b in BLOCKS])
def test_doc_block_runs(block: Block, tmp_path, monkeypatch):
    if block.marker != "model" and NEEDS_MODEL.search(block.code):
        pytest.fail(f"{block.id} loads the model: put <!-- model --> on the line before its fence")
    monkeypatch.chdir(tmp_path)
    # Padded to the block's place in the file, so tracebacks name the Markdown file and line.
    name = str(block.path)
    linecache.cache[name] = (0, None, block.path.read_text(encoding="utf-8").splitlines(True), name)
    code = compile("\n" * block.line + block.code, name, "exec")
    exec(code, {"__name__": f"docs_block_{block.line}"})
