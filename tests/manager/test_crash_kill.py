"""SIGKILL during at least 50 sync and async saves: restore always finds the newest commit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import statevault

ROUNDS = 56  # one kill each; nearly every one lands inside a save call or an async write


def test_sigkill_at_random_points_never_exposes_a_partial_step(tmp_path: Path) -> None:
    # a SIGKILL leaves the page cache intact, so memory-backed /dev/shm tests the same
    # thing as a disk, without fsync costs (60 runs start, save and get killed)
    shm = Path("/dev/shm")
    directory = tempfile.mkdtemp(dir=shm) if os.access(shm, os.W_OK) else str(tmp_path)
    try:
        rounds = _run_rounds(directory)
    finally:
        if directory != str(tmp_path):
            subprocess.run(["rm", "-rf", directory], check=True)
    assert len(rounds) == ROUNDS
    assert sum(r["during_save"] for r in rounds) >= 50
    for r in rounds:
        assert r["leftovers_after"] == 0
        assert r["all_verify"] and r["bit_exact"]
        # the newest commit, which is at least the newest step known to be committed
        assert r["restored"] == r["newest_committed"]
        if r["known_committed"] >= 0:
            assert r["restored"] is not None and r["restored"] >= r["known_committed"]
    assert any(r["leftovers_before"] for r in rounds)  # kills did interrupt writes
    assert rounds[-1]["restored"] > 10  # each run resumed and went on


def _run_rounds(directory: str) -> list[dict[str, object]]:
    source = str(Path(statevault.__file__).parents[1])
    root = str(Path(__file__).parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([source, root])}
    completed = subprocess.run(
        [sys.executable, "-m", "tests.helpers.kill_rounds", directory, str(ROUNDS), "14"],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    rounds: list[dict[str, object]] = json.loads(completed.stdout.splitlines()[-1])
    return rounds
