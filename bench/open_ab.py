"""In-process A/B for the reader refactor: CPU time of load_into and load on one file.

Run it once per code version, alternating, on the same file (wall time on a shared machine
is too noisy; ``process_time`` counts every thread's CPU):

    python bench/open_ab.py make small /tmp/small.safetensors
    PYTHONPATH=<old>/src python bench/open_ab.py old small /tmp/small.safetensors
    PYTHONPATH=src       python bench/open_ab.py new small /tmp/small.safetensors

``small`` is 20,000 tensors (10,000 Linear(4, 4)); ``big`` is 128 MiB in 16 tensors.
"""

from __future__ import annotations

import statistics
import sys
import time

from torch import nn

import statevault


def build(kind: str) -> nn.Module:
    if kind == "small":
        return nn.ModuleList([nn.Linear(4, 4) for _ in range(10_000)])
    return nn.Sequential(*[nn.Linear(2048, 2048) for _ in range(8)])


def main(label: str, kind: str, path: str, runs: int = 9) -> None:
    if label == "make":
        statevault.save(build(kind), path)
        return
    fresh = build(kind)
    into, whole = [], []
    for _ in range(runs):
        start = time.process_time()
        statevault.load_into(fresh, path)
        into.append(time.process_time() - start)
        start = time.process_time()
        statevault.load(path)
        whole.append(time.process_time() - start)
    sys.stdout.write(
        f"{label}: load_into {statistics.median(into) * 1e3:.1f} ms, "
        f"load {statistics.median(whole) * 1e3:.1f} ms (CPU, median of {runs})\n"
    )


if __name__ == "__main__":
    main(*sys.argv[1:4])
