"""Training-loop stall per checkpoint: CheckpointManager async saves vs torch.save vs DCP.

A training loop pays, per checkpoint, the time the save call blocks it. This measures, on
the same state in one process (so machine noise hits every contender alike):

- ``torch.save`` and ``statevault.save``: synchronous, the whole write is the stall;
- ``CheckpointManager.save(blocking=False)``: the stall is the snapshot into reused host
  staging; the write, hashing (xxh3 checksums), commit and retention run in the background;
- ``torch.distributed.checkpoint.async_save`` (single process, no process group needed):
  its stall is its own staging copy.

Each async contender's save is waited for before the next round, so stalls do not overlap
writes of earlier rounds. It also reports the peak extra anonymous memory of one async save
(above the level before the call, first save: staging allocated) and the steady-state
throughput of back-to-back async saves (commits per second times bytes).

    python -m bench.manager_ab --mib 1024 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

import statevault
from bench.measure import peak_during

TENSOR_MIB = 16


def make_state(mib: int) -> dict[str, object]:
    """Model + Adam-like optimizer state of ``mib`` MiB in 16 MiB float32 tensors, + RNG."""
    per = TENSOR_MIB * 1024 * 1024 // 4
    count = max(1, mib // TENSOR_MIB // 3)  # weights, exp_avg, exp_avg_sq
    weights = {f"layer{i}.weight": torch.randn(per) for i in range(count)}
    optim = {
        i: {"exp_avg": torch.randn(per), "exp_avg_sq": torch.rand(per), "step": 10}
        for i in range(count)
    }
    return {"model": weights, "optim": {"state": optim}, "rng": torch.get_rng_state(), "step": 0}


def nbytes(state: dict[str, object]) -> int:
    total = 0
    stack: list[object] = [state]
    while stack:
        value = stack.pop()
        if isinstance(value, torch.Tensor):
            total += value.nbytes
        elif isinstance(value, dict):
            stack.extend(value.values())
    return total


def _timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def _stall_rounds(directory: Path, state: dict[str, object], rounds: int) -> dict[str, list[float]]:
    import torch.distributed.checkpoint as dcp

    stalls: dict[str, list[float]] = {
        "torch.save": [],
        "statevault.save": [],
        "manager async": [],
        "DCP async_save": [],
    }
    with statevault.CheckpointManager(directory / "manager", max_to_keep=1) as manager:
        manager.save(0, state, blocking=False)  # first save allocates the staging area
        manager.wait()
        for step in range(1, rounds + 1):
            stalls["torch.save"].append(_timed(partial(torch.save, state, directory / "t.pt")))
            stalls["statevault.save"].append(
                _timed(partial(statevault.save, state, directory / "s.safetensors"))
            )
            stalls["manager async"].append(
                _timed(partial(manager.save, step, state, blocking=False))
            )
            manager.wait()
            with warnings.catch_warnings():  # "torch.distributed is disabled ... single process"
                warnings.simplefilter("ignore")
                started = time.perf_counter()
                future = dcp.async_save(state, checkpoint_id=directory / f"dcp{step % 2}")
                stalls["DCP async_save"].append(time.perf_counter() - started)
                future.result()
    return stalls


def _peak_and_throughput(
    directory: Path, state: dict[str, object], saves: int
) -> tuple[int, float]:
    with statevault.CheckpointManager(directory / "peak", max_to_keep=1) as manager:
        peak = peak_during(lambda: (manager.save(0, state, blocking=False), manager.wait()))
        start = time.perf_counter()
        for step in range(1, saves + 1):
            manager.save(step, state, blocking=False)
        manager.wait()
        seconds = time.perf_counter() - start
    return peak.anon, saves * nbytes(state) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=1024, help="state size (default 1 GiB)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: temp)")
    args = parser.parse_args()
    state = make_state(args.mib)
    size = nbytes(state)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        directory = Path(tmp)
        stalls = _stall_rounds(directory, state, args.rounds)
        peak, throughput = _peak_and_throughput(directory, state, args.rounds)
    medians = {name: statistics.median(times) for name, times in stalls.items()}
    sync = medians["torch.save"]
    print(f"state: {size / 2**30:.2f} GiB in {len(state['model']) * 3} tensors")  # type: ignore[arg-type]
    print(f"{'contender':<18} {'stall (median s)':>17} {'x torch.save':>13}")
    for name, seconds in medians.items():
        print(f"{name:<18} {seconds:>17.3f} {seconds / sync:>13.3f}")
    dcp_stall = medians["DCP async_save"]
    print(f"manager async stall / DCP async_save stall: {medians['manager async'] / dcp_stall:.3f}")
    print(f"peak extra anonymous memory of an async save: {peak / size:.3f}x the state")
    print(f"steady async save throughput (xxh3 checksums): {throughput / 2**30:.2f} GiB/s")


if __name__ == "__main__":
    main()
