"""The examples in README.md and docs/*.md run as written, in the order shown.

Each markdown file is one script: its ```python blocks run in one namespace and its
```console blocks run in a shell, all in one fresh directory, top to bottom. A console block
is a list of ``$ command`` lines, each followed by the output it must print (stdout and
stderr together, as a terminal shows them); a line ``...`` in the expected output stands for
any number of lines. So a doc cannot drift from what the code does, and every sample says how
its input files are made (an earlier block made them). A block fenced as ```text output
right after a python block is what that python block prints, matched the same way.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
_FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```[ \t]*$", re.M | re.S)
RUNNABLE = ("python", "console", "output")


@dataclass(frozen=True)
class Block:
    kind: str
    text: str
    line: int  # 1-based line of the opening fence, for failure messages


def blocks(path: Path) -> list[Block]:
    text = path.read_text(encoding="utf-8")
    found = []
    for m in _FENCE.finditer(text):
        words = m.group(1).split()
        kind = "output" if words[1:2] == ["output"] else (words[0] if words else "")
        if kind in RUNNABLE:
            found.append(Block(kind, m.group(2), text.count("\n", 0, m.start()) + 1))
    return found


DOCS = [doc for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))] if blocks(doc)]


def commands(console: str) -> list[tuple[str, list[str]]]:
    """``$ cmd`` lines with the output lines that follow each one."""
    runs: list[tuple[str, list[str]]] = []
    for line in console.splitlines():
        if line.startswith("$ "):
            runs.append((line[2:], []))
        elif runs:
            runs[-1][1].append(line)
        elif line.strip():
            raise AssertionError(f"console block starts with output, not a command: {line!r}")
    return runs


def matches(expected: list[str], actual: list[str]) -> bool:
    """Line-by-line equality after stripping trailing spaces; ``...`` skips any lines."""
    expected = [e.rstrip() for e in expected]
    actual = [a.rstrip() for a in actual]
    while expected and not expected[-1]:
        expected.pop()
    while actual and not actual[-1]:
        actual.pop()
    if not expected:
        return not actual
    head = expected[0]
    if head.strip() == "...":
        rest = expected[1:]
        return any(matches(rest, actual[i:]) for i in range(len(actual) + 1))
    return bool(actual) and actual[0] == head and matches(expected[1:], actual[1:])


def run_console(block: Block, cwd: Path, where: str) -> None:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["COLUMNS"] = "100"  # rich wraps at the terminal width; docs are written for 100
    env.pop("FORCE_COLOR", None)
    for command, expected in commands(block.text):
        done = subprocess.run(
            ["bash", "-c", command],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=300,
        )
        actual = done.stdout.splitlines()
        assert matches(expected, actual), (
            f"{where}: `$ {command}` printed:\n{done.stdout}\nbut the doc says:\n"
            + "\n".join(expected)
        )


@pytest.mark.slow
@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_doc_examples_run_as_written(
    doc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    found = blocks(doc)
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": "__doc_example__"}
    printed: str | None = None  # what the last python block printed
    for block in found:
        where = f"{doc.relative_to(ROOT)}:{block.line}"
        if block.kind == "python":
            with contextlib.redirect_stdout(io.StringIO()) as out:
                exec(compile(block.text, where, "exec"), namespace)
            printed = out.getvalue()
        elif block.kind == "output":
            assert printed is not None, f"{where}: an output block must follow a python block"
            assert matches(block.text.splitlines(), printed.splitlines()), (
                f"{where}: the python block before printed:\n{printed}\nbut the doc says:\n"
                + block.text
            )
            printed = None
        else:
            run_console(block, tmp_path, where)


def test_readme_and_cli_docs_have_examples_to_run() -> None:
    assert ROOT / "README.md" in DOCS


def test_matcher_treats_ellipsis_as_any_lines() -> None:
    assert matches(["a", "...", "d"], ["a", "b", "c", "d"])
    assert matches(["a", "...", "d"], ["a", "d"])
    assert not matches(["a", "...", "d"], ["a", "b", "c"])
    assert not matches(["a", "b"], ["a", "c"])
    assert not matches(["a"], ["a", "b"])  # nothing extra without an ellipsis


def test_commands_split_a_console_block() -> None:
    assert commands("$ one\nout 1\nout 2\n$ two\n") == [("one", ["out 1", "out 2"]), ("two", [])]
    with pytest.raises(AssertionError, match="starts with output"):
        commands("stray\n$ one\n")
