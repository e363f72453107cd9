"""Every fenced code block of README.md and docs/*.md is exercised, and the docs site builds strictly.

Convention (the same for every page):

- a ```python block runs in a fresh subprocess in a temporary directory (it must finish in seconds on
  the CPU: train with ``model=tiny`` and a step or two);
- in a ```bash block, every line starting with ``rlvr train`` is composed as ``rlvr train ... --cfg job``
  would (all such lines of all pages in ONE worker process, through :func:`rlvr.core.config.compose`;
  ``-m`` sweeps are expanded one value at a time), and every other ``rlvr <command>`` line runs
  ``rlvr <command> --help``, which must exit 0;
- ``<!-- docs-test: skip (needs GPU) -->`` (or ``(needs network)``, ``(needs vLLM)``, any ``needs ...``) on
  the line right before a block skips it, with that reason;
- blocks in other languages (yaml, toml, text, none) are not code and are not run.

The example plugin package (``examples/rlvr-plugin-example``) counts as installed for the bash lines,
as the docs tell the reader to install it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SKIP = re.compile(r"<!--\s*docs-test:\s*skip\s*\((needs [^)]+)\)\s*-->")
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
PYTHON = {"python", "py", "python3"}
SHELL = {"bash", "sh", "shell", "console"}
ENV = {
    **os.environ,
    "OMP_WAIT_POLICY": "PASSIVE",
    "OMP_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")])),
}


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    skip: str | None  # the reason given by a docs-test skip marker

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of one Markdown file (fences indented in list items are dedented)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = len(m.group(1)), m.group(2), m.group(3).lower()
        prev = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        skip = SKIP.search(prev)
        body = []
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            body.append(lines[j][indent:] if lines[j][:indent].strip() == "" else lines[j])
            j += 1
        if j == len(lines):
            raise AssertionError(f"{path}:{i + 1}: code fence {fence} is never closed")
        out.append(Block(path, i + 1, lang, "\n".join(body) + "\n", skip.group(1) if skip else None))
        i = j + 1
    return out


ALL = [b for p in DOCS for b in blocks(p)]


def shell_commands(code: str) -> list[str]:
    """The ``rlvr ...`` commands of a shell block: continuation lines joined, one entry per line."""
    joined = re.sub(r"\\\n\s*", " ", code)
    return [ln.strip() for ln in joined.splitlines() if re.match(r"rlvr\s", ln.strip())]


def _param(block: Block, suffix: str = "") -> object:
    marks = [pytest.mark.skip(reason=block.skip)] if block.skip else []
    return pytest.param(block, id=block.where + suffix, marks=marks)


PY_BLOCKS = [_param(b) for b in ALL if b.lang in PYTHON]
SHELL_LINES = [(b, cmd) for b in ALL if b.lang in SHELL for cmd in shell_commands(b.code)]


def test_the_docs_have_code_to_test() -> None:
    """The collection itself works: README and the docs pages hold python blocks and rlvr commands."""
    assert any(b.path.name == "README.md" for b in ALL)
    assert len(PY_BLOCKS) >= 5 and len(SHELL_LINES) >= 20


@pytest.mark.parametrize("block", PY_BLOCKS)
def test_python_block_runs(block: Block, tmp_path: Path) -> None:
    script = tmp_path / "block.py"
    script.write_text(block.code, encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"{block.where}: the python block failed\n{block.code}\n{proc.stderr[-3000:]}"


# -- rlvr commands in shell blocks: one worker process composes / asks --help for all of them -----------------

WORKER = r"""
import contextlib, io, json, shlex, sys, traceback
sys.path.insert(0, sys.argv[2])                      # the example plugin package, as if pip-installed
import rlvr, rlvr_plugin_example
from hydra.core.override_parser.overrides_parser import OverridesParser
from rlvr.core.config import compose
rlvr.register(rlvr_plugin_example, name="rlvr-plugin-example")
DROP = {"-m", "--multirun"}

def variants(overrides):
    # a -m sweep (key=a,b,c) is composed once per value, the other sweeps at their first value
    parsed = OverridesParser.create().parse_overrides(overrides)
    values = [[o.input_line] if not o.is_sweep_override() else
              [f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] for o in parsed]
    base = [v[0] for v in values]
    out = [base]
    for i, vs in enumerate(values):
        out += [base[:i] + [v] + base[i + 1:] for v in vs[1:]]
    return out

def train(cmd):
    args = shlex.split(cmd, comments=True)[2:]
    out, i = [], 0
    while i < len(args):
        a = args[i]
        if a in ("--cfg", "-c"):
            i += 2
            continue
        if not a.startswith("--cfg=") and a not in DROP:
            out.append(a)
        i += 1
    for overrides in variants(out):
        compose(overrides)

def help_(cmd):
    from rlvr.cli import main
    command = shlex.split(cmd, comments=True)[1]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        try:
            main([command, "--help"])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    if code != 0:
        raise RuntimeError(f"`rlvr {command} --help` exited {code}: {buf.getvalue()[-1500:]}")
    if command not in buf.getvalue():
        raise RuntimeError(f"`rlvr {command} --help` does not mention {command!r}: {buf.getvalue()[-1500:]}")

results = {}
for cmd in json.loads(open(sys.argv[1]).read()):
    try:
        (train if shlex.split(cmd, comments=True)[1] == "train" else help_)(cmd)
        results[cmd] = None
    except BaseException as exc:
        results[cmd] = f"{type(exc).__name__}: {exc}"[-3000:]
print("RESULTS" + json.dumps(results))
"""


@pytest.fixture(scope="module")
def shell_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str | None]:
    tmp = tmp_path_factory.mktemp("docs-shell")
    todo = sorted({cmd for b, cmd in SHELL_LINES if not b.skip})
    (tmp / "commands.json").write_text(json.dumps(todo))
    (tmp / "worker.py").write_text(WORKER)
    proc = subprocess.run(
        [
            sys.executable,
            str(tmp / "worker.py"),
            str(tmp / "commands.json"),
            str(ROOT / "examples" / "rlvr-plugin-example"),
        ],
        cwd=tmp,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    found = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS")]
    assert proc.returncode == 0 and found, f"the docs worker failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return json.loads(found[-1][len("RESULTS") :])


def _short(cmd: str) -> str:
    words = " ".join(shlex.split(cmd, comments=True))
    return words if len(words) <= 70 else words[:67] + "..."


@pytest.mark.parametrize(
    "block,cmd",
    [
        pytest.param(b, c, id=f"{b.where}:{_short(c)}", marks=[pytest.mark.skip(reason=b.skip)] if b.skip else [])
        for b, c in SHELL_LINES
    ],
)
def test_rlvr_command(block: Block, cmd: str, shell_results: dict[str, str | None]) -> None:
    error = shell_results[cmd]
    assert error is None, f"{block.where}: `{cmd}`\n{error}"


def test_shell_lines_parse() -> None:
    """Every rlvr line is valid shell (quotes closed); a line the worker cannot split would hide a doc error."""
    for block, cmd in SHELL_LINES:
        assert len(shlex.split(cmd, comments=True)) >= 2, f"{block.where}: `{cmd}`"


def test_skip_markers_sit_on_blocks() -> None:
    """A skip marker must be directly followed by a code block, or it silently skips nothing."""
    for path in DOCS:
        lines = path.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            if "docs-test:" in line:
                assert SKIP.search(line), f"{path}:{i + 1}: write the marker as <!-- docs-test: skip (needs X) -->"
                nxt = next((ln for ln in lines[i + 1 :] if ln.strip()), "")
                assert FENCE.match(nxt), f"{path}:{i + 1}: a docs-test marker must be right before a code fence"


def test_readme_holds_the_ci_command() -> None:
    """CI runs the README's test command: the last line of .ci/run appears verbatim in README.md."""
    last = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert last in (ROOT / "README.md").read_text(encoding="utf-8")


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None:
        pytest.skip("mkdocs / mkdocs-material are not installed (pip install -e '.[docs]')")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stderr[-5000:]}"
    assert (tmp_path / "site" / "index.html").is_file()
