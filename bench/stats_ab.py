"""stats() beside the verified reads it must keep up with, on one file, same process.

The issue asks ``stats`` on a 2 GiB checkpoint to run at >= 0.5x the verified read speed
with bounded memory. Each run times, alternating, ``verify`` (read and hash every byte),
``load`` (read, hash and keep every tensor) and ``stats``, from the page cache (each is run
once first), and samples ``stats``' peak anonymous memory (``bench.measure``):

    python bench/stats_ab.py make /tmp/stats2g.safetensors   # 2 GiB: 64 x 32 MiB
    PYTHONPATH=src python bench/stats_ab.py run /tmp/stats2g.safetensors

Prints the medians, GB/s and the ratios stats/verify and stats/load.
"""

from __future__ import annotations

import os
import statistics
import sys

import torch

import statevault
from bench.measure import peak_during, timed

TENSORS = 64
ELEMENTS = 8 << 20  # 32 MiB of float32 each: 2 GiB in all


def make(path: str) -> None:
    generator = torch.Generator().manual_seed(0)
    state = {
        f"layers.{i}.weight": torch.randn(ELEMENTS, generator=generator) for i in range(TENSORS)
    }
    statevault.save(state, path)


def run(path: str, runs: int = 5) -> None:
    size = os.path.getsize(path)
    operations = {
        "verify": lambda: statevault.verify(path),
        "load": lambda: statevault.load(path),
        "stats": lambda: statevault.stats(path),
    }
    peak = peak_during(operations["stats"])  # also warms the page cache
    for operation in operations.values():
        operation()
    times: dict[str, list[float]] = {name: [] for name in operations}
    for _ in range(runs):
        for name, operation in operations.items():
            times[name].append(timed(operation))
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, seconds in medians.items():
        sys.stdout.write(f"{name:7s} {seconds:6.3f} s  {size / seconds / 1e9:5.2f} GB/s\n")
    sys.stdout.write(
        f"stats speed / verify speed = {medians['verify'] / medians['stats']:.2f}x, "
        f"stats / load = {medians['load'] / medians['stats']:.2f}x; "
        f"stats peak extra anonymous memory {peak.anon / 2**20:.0f} MiB "
        f"for a {size / 2**30:.2f} GiB file (median of {runs}, threads {torch.get_num_threads()})\n"
    )


if __name__ == "__main__":
    {"make": make, "run": run}[sys.argv[1]](sys.argv[2])
