"""Two processes loading one file with mmap=True hold one copy of its pages between them.

Counted from each process's ``/proc/self/smaps`` while both hold the mapping: every page of
the file is resident in both, all of it shared and clean, and each is charged half of it
(Pss), none of it private. No timing is involved.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import torch

import statevault

MIB = 1 << 20


def _start(path: Path) -> subprocess.Popen[str]:
    source = str(Path(statevault.__file__).parents[1])
    root = str(Path(__file__).parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([source, root])}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.mapped_child", str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=root,
    )


def _ask(child: subprocess.Popen[str]) -> dict[str, int]:
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write("measure\n")
    child.stdin.flush()
    usage: dict[str, int] = json.loads(child.stdout.readline())
    return usage


def test_two_processes_share_the_pages_of_one_mapped_file(tmp_path: Path) -> None:
    path = tmp_path / "shared.safetensors"
    generator = torch.Generator().manual_seed(0)
    statevault.save({f"w{i}": torch.randn(1024, 1024, generator=generator) for i in range(8)}, path)
    size = path.stat().st_size  # 32 MiB of data and a small header
    with ExitStack() as stack:  # leaving closes each child's pipes and waits for it
        children = [stack.enter_context(_start(path)) for _ in range(2)]
        for child in children:
            assert child.stdout is not None
            line = child.stdout.readline()
            assert line == "ready\n", child.stderr.read() if child.stderr else line
        usages = [_ask(child) for child in children]  # both still hold their mapping
    for usage in usages:
        assert usage["Rss"] >= 32 * MIB  # every data page is mapped in each process
        assert usage["Rss"] <= size + 4096
        assert usage["Shared_Clean"] >= 32 * MIB  # ... and counted as shared with the other
        assert usage["Private_Dirty"] == 0  # nothing was copied on write
        assert usage["Pss"] <= usage["Rss"] * 0.55  # each is charged its half
    assert sum(u["Pss"] for u in usages) <= size * 1.05  # one copy between the two
