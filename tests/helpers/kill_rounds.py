"""SIGKILL a training run's saves at random points, many times, and record what restore sees.

Run as ``python -m tests.helpers.kill_rounds DIR ROUNDS SEED``; prints one JSON report.
This process imports torch once and forks one child per round (a real process, killed for
real): the child opens a CheckpointManager on DIR, resumes from the latest step and saves
step after step, alternating blocking and async saves, reporting each call on a pipe. The
parent kills it with SIGKILL at a random moment, then checks the directory as the next run
would find it. The assertions live in tests/manager/test_crash_kill.py.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tests.helpers.training_states import assert_state_is, state_for

from statevault import CheckpointManager
from statevault.manager import layout

NUMEL = 64 * 1024  # two float32 tensors of 256 KiB: a save takes milliseconds


def _child(directory: Path, report: int) -> None:
    def say(text: str) -> None:
        os.write(report, f"{text}\n".encode())

    with CheckpointManager(directory, max_to_keep=3) as manager:
        start = manager.restore().step + 1 if manager.latest_step() is not None else 0
        for step in range(start, start + 1000):
            blocking = step % 2 == 0
            say(f"begin {step} {'sync' if blocking else 'async'}")
            manager.save(step, state_for(step, numel=NUMEL), blocking=blocking)
            say(f"returned {step}")


def _known_committed(lines: list[str]) -> tuple[int, bool]:
    """The newest step certainly committed, and whether the kill landed during a save.

    A sync save is committed when it returns. An async one is in flight until the next
    save returns: that save waited for it (sync) or for its staging slot (async,
    max_in_flight=1), which is freed only after the commit.
    """
    committed, in_call, pending_async = -1, False, None
    is_async = False
    for line in lines:
        kind, step_text, *mode = line.split()
        step = int(step_text)
        if kind == "begin":
            in_call, is_async = True, mode == ["async"]
            continue
        in_call = False
        if pending_async is not None:
            committed, pending_async = pending_async, None
        if is_async:
            pending_async = step
        else:
            committed = step
    return committed, in_call or pending_async is not None


def _round(directory: Path, rng: random.Random) -> dict[str, Any]:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        try:
            _child(directory, write_end)
        finally:
            os._exit(0)
    os.close(write_end)
    received = b""
    while b"begin" not in received:  # past imports and the resume: saving now
        received += os.read(read_end, 65536)
    time.sleep(rng.uniform(0.0, 0.05))
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    while chunk := os.read(read_end, 65536):
        received += chunk
    os.close(read_end)
    lines = [line for line in received.decode().splitlines() if line]
    known, during_save = _known_committed(lines)
    return {"known_committed": known, "during_save": during_save, **_inspect(directory)}


def _inspect(directory: Path) -> dict[str, Any]:
    """What the next run finds: leftovers, committed steps (all must verify), the restore."""
    leftovers = [name for name in os.listdir(directory) if name.startswith(".step-")]
    committed = sorted(layout.committed_steps(directory))
    with CheckpointManager(directory, max_to_keep=3) as manager:
        after = [name for name in os.listdir(directory) if name.startswith(".step-")]
        all_verify = all(info.status == "valid" for info in manager.steps(verify=True))
        restored = manager.restore() if committed else None
        bit_exact = True
        if restored is not None:
            try:
                assert_state_is(restored.state, restored.step, numel=NUMEL)
            except AssertionError:
                bit_exact = False
    return {
        "leftovers_before": len(leftovers),
        "leftovers_after": len(after),
        "newest_committed": committed[-1] if committed else None,
        "restored": restored.step if restored is not None else None,
        "all_verify": all_verify,
        "bit_exact": bit_exact,
    }


def main(argv: list[str]) -> None:
    directory, rounds, seed = Path(argv[0]), int(argv[1]), int(argv[2])
    torch.set_num_threads(1)  # no intra-op thread pool in a process that forks
    rng = random.Random(seed)
    results = [_round(directory, rng) for _ in range(rounds)]
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1:])
