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


FENCE = re.compile(r"^\s*```\s*([A-Za-z0-9_+-]*)")
#: Fence languages that hold Python but would escape the block runner (which runs ```python).
PYTHON_ALIASES = {"py", "python3", "py3", "pycon", "ipython", "ipython3", "pytb"}


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_is_fenced_as_python(path):
    """A Python block under another fence name (```py, ```pycon, ...) would never run."""
    bad = [f"{path.name}:{i}: ```{m.group(1)}" for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
           if (m := FENCE.match(line)) and m.group(1).lower() in PYTHON_ALIASES]
    assert not bad, f"fence these as ```python so test_doc_block_runs runs them: {bad}"


def shell_blocks(path: Path) -> List[Block]:
    """The ```bash / ```sh / ```console blocks of a Markdown file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m and m.group(1) in ("bash", "sh", "shell", "console"):
            j = i + 1
            while j < len(lines) and lines[j].strip() != "```":
                j += 1
            out.append(Block(path, i + 1, "\n".join(lines[i + 1 : j]) + "\n", None, ""))
            i = j + 1
        else:
            i += 1
    return out


def tokenloom_commands(code: str) -> List[List[str]]:
    """The ``tokenloom ...`` command lines of a shell block, split like the shell would
    (continuation lines joined, ``&&`` / ``;`` / ``|`` chains and comments cut, env assignments
    and ``python -m tokenloom`` handled)."""
    import shlex

    text = code.replace("\\\n", " ")
    cmds = []
    for line in text.splitlines():
        line = line.lstrip("$ ").strip()
        for part in re.split(r"&&|;|\|\|?", line):
            try:
                words = shlex.split(part, comments=True)
            except ValueError:
                continue
            while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
                words = words[1:]
            if words[:3] == ["python", "-m", "tokenloom"]:
                words = ["tokenloom"] + words[3:]
            if words and words[0] == "tokenloom" and len(words) > 1:
                cmds.append(words[1:])
    return cmds


SHELL = [(b, cmd) for f in FILES for b in shell_blocks(f) for cmd in tokenloom_commands(b.code)]


def test_shell_commands_found():
    assert any(cmd[0] == "generate" for _, cmd in SHELL) and any(cmd[0] == "bench" for _, cmd in SHELL)


@pytest.mark.parametrize("block,argv", SHELL, ids=[f"{b.id}:{' '.join(c)[:40]}" for b, c in SHELL])
def test_shell_command_parses(block, argv, tmp_path, monkeypatch):
    """Every ``tokenloom ...`` command the docs show is accepted by the current CLI (flags,
    choices and values; parsed only, nothing runs)."""
    from tokenloom.cli.main import UsageError, build_parser

    # From a clone's root (output folders must exist): the repo's folders, plus what the block
    # itself creates with mkdir.
    monkeypatch.chdir(tmp_path)
    for d in ROOT.iterdir():
        if d.is_dir() and not d.name.startswith("."):
            (tmp_path / d.name).symlink_to(d)
    for m in re.finditer(r"mkdir\s+(?:-p\s+)?([\w./-]+)", block.code):
        (tmp_path / m.group(1)).mkdir(parents=True, exist_ok=True)
    try:
        build_parser().parse_args(argv)
    except UsageError as e:
        pytest.fail(f"{block.id}: tokenloom {' '.join(argv)}: {e}")


def test_hf_generate_calls_pass_an_attention_mask():
    """HF warns (and can misbehave with pad == eos) when ``generate`` gets no attention mask."""
    bad = []
    for b in BLOCKS:
        for m in re.finditer(r"model\.generate\(([^()]*(?:\([^()]*\)[^()]*)*)\)", b.code, re.S):
            if "attention_mask" not in m.group(1) and "**" not in m.group(1):
                bad.append(f"{b.id}: model.generate({m.group(1)[:40]}...)")
    assert not bad, bad
