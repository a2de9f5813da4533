"""Saves and loads leave the rest of the process alone: no switch flipped for every thread.

The cyclic collector used to be switched off for the whole process during saves and loads
of many tensors; a training loop running beside an async save would then run without it.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

import statevault


def _watch_collector(work: Callable[[], object]) -> list[bool]:
    """``gc.isenabled()`` as seen by a second thread, sampled all the while ``work`` runs."""
    seen: list[bool] = []
    started, done = threading.Event(), threading.Event()

    def sample() -> None:
        while not done.is_set():
            seen.append(gc.isenabled())
            started.set()

    sampler = threading.Thread(target=sample)
    sampler.start()
    started.wait()
    try:
        before = len(seen)
        work()
        during = seen[before:]
    finally:
        done.set()
        sampler.join()
    return during


@pytest.mark.parametrize("call", ["save", "load", "load_into", "Checkpoint"])
def test_another_thread_always_sees_the_collector_on(tmp_path: Path, call: str) -> None:
    assert gc.isenabled()
    model = nn.ModuleList([nn.Linear(2, 2) for _ in range(3000)])  # 6,000 small tensors
    path = tmp_path / "many.safetensors"
    statevault.save(model, path)

    def open_and_read() -> None:
        with statevault.Checkpoint(path) as checkpoint:
            checkpoint.tree  # noqa: B018 (decoding the tree is what is watched)
            checkpoint.load()

    work: dict[str, Callable[[], object]] = {
        "save": lambda: statevault.save(model, path),
        "load": lambda: statevault.load(path),
        "load_into": lambda: statevault.load_into(model, path),
        "Checkpoint": open_and_read,
    }
    during = _watch_collector(work[call])
    assert during, "the sampling thread never ran while the call did"
    assert all(during), f"collector seen off in {during.count(False)} of {len(during)} samples"
    assert gc.isenabled()


def test_the_watcher_sees_a_pause(tmp_path: Path) -> None:
    """The check above can fail: a call that pauses the collector is caught."""

    def paused_save() -> None:
        gc.disable()
        try:
            statevault.save({f"t{i}": torch.ones(2) for i in range(3000)}, tmp_path / "p.st")
        finally:
            gc.enable()

    during = _watch_collector(paused_save)
    assert during and not all(during)
