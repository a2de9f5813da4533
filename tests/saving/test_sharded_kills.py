"""A sharded save SIGKILLed before each file-system step leaves the old or the new set loadable.

A forked child saves with ``os.fsync``, ``os.replace`` and ``os.unlink`` wrapped so that it
kills itself (SIGKILL, nothing cleaned up) just before the k-th of those calls; k runs
from 0 until a save completes. After every kill the directory must load as exactly the
old state or exactly the new one (never a mix), and the next save must leave only its own
files behind.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import statevault

STEPS = ("fsync", "replace", "unlink")


def state(seed: int, n: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {f"layers.{i}.weight": torch.randn(50, 50, generator=generator) for i in range(n)}


def save_killed_at(step: int, obj: Any, target: Path, size: int | None) -> bool:
    """Save in a forked child killed before its ``step``-th step; True when it was killed."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            counter = iter(range(step + 1))
            lock = threading.Lock()

            def killing(original: Callable[..., Any]) -> Callable[..., Any]:
                def wrapper(*args: Any, **kwargs: Any) -> Any:
                    with lock:
                        if next(counter) == step:
                            os.kill(os.getpid(), signal.SIGKILL)
                    return original(*args, **kwargs)

                return wrapper

            for name in STEPS:
                setattr(os, name, killing(getattr(os, name)))
            statevault.save(obj, target, max_shard_size=size)
            os._exit(0)
        except BaseException:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL
        return True
    assert os.WEXITSTATUS(status) == 0, "the save failed instead of being killed"
    return False


def loads_as(source: Path) -> dict[str, torch.Tensor]:
    loaded = statevault.load(source)
    assert isinstance(loaded, dict)
    return loaded


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


CASES = {
    "3 shards -> 2 shards": (3, 25_000, 2, 25_000),
    "2 shards -> 2 shards (same names)": (4, 25_000, 4, 25_000),
    "one file -> 3 shards": (3, 10**9, 5, 25_000),
    "3 shards -> one file": (5, 25_000, 3, 10**9),
}


@pytest.mark.parametrize("case", CASES)
def test_kill_at_every_step_leaves_old_or_new_set(tmp_path: Path, case: str) -> None:
    old_n, old_size, new_n, new_size = CASES[case]
    old, new = state(1, old_n), state(2, new_n)
    steps_seen = 0
    for step in range(200):
        directory = tmp_path / f"step{step}"
        directory.mkdir()
        target = directory / "model.safetensors"
        statevault.save(old, target, max_shard_size=old_size)
        killed = save_killed_at(step, new, target, new_size)
        loaded = loads_as(directory)
        assert same(loaded, old) or same(loaded, new), f"{case}: kill at step {step}: a mix"
        if not killed:
            assert same(loaded, new)
            break
        steps_seen += 1
        # the next save carries out what the killed one committed, then leaves only its own
        third = state(3, 3)  # two shards
        statevault.save(third, target, max_shard_size=25_000)
        assert same(loads_as(directory), third)
        assert sorted(os.listdir(directory)) == [
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json",
        ], f"{case}: kill at step {step}: leftovers"
    assert steps_seen >= 8  # the commit really was interrupted at each of its steps


def test_a_killed_commit_is_read_as_the_new_set_without_writing(tmp_path: Path) -> None:
    """Killed after the journal and the first rename: readers see the new set whole."""
    target = tmp_path / "model.safetensors"
    old, new = state(1, 4), state(2, 4)
    statevault.save(old, target, max_shard_size=25_000)
    # fsyncs: 2 shards, index, journal file, directory after the journal; then the renames
    killed = save_killed_at(6, new, target, 25_000)
    assert killed
    before = sorted(os.listdir(tmp_path))
    assert ".model.safetensors.svjournal" in before
    assert same(loads_as(tmp_path / "model.safetensors.index.json"), new)
    assert sorted(os.listdir(tmp_path)) == before  # reading changed nothing
    # a one-file save elsewhere in the directory must not take the committed temporaries
    statevault.save(state(9, 1), tmp_path / "other.safetensors")
    assert same(loads_as(tmp_path / "model.safetensors.index.json"), new)
