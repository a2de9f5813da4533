"""A/B for the load_state_dict-semantics work: CPU time of load_into and save, 20,000 tensors.

The model is nn.ModuleList of 10,000 nn.Linear(8, 8) (plain modules: the fast path). Run it
once per code version, alternating, on the same file (``process_time`` counts every thread's
CPU; wall time on a shared machine is too noisy):

    python bench/torch_semantics_ab.py make /tmp/lin8.safetensors
    PYTHONPATH=<old>/src python bench/torch_semantics_ab.py old /tmp/lin8.safetensors
    PYTHONPATH=src       python bench/torch_semantics_ab.py new /tmp/lin8.safetensors
"""

from __future__ import annotations

import os
import statistics
import sys
import time

from torch import nn

import statevault


def build() -> nn.Module:
    return nn.ModuleList([nn.Linear(8, 8) for _ in range(10_000)])


def main(label: str, path: str, runs: int = 9) -> None:
    if label == "make":
        statevault.save(build(), path)
        return
    fresh = build()
    into, saves = [], []
    target = f"{path}.{label}.out"
    for _ in range(runs):
        start = time.process_time()
        statevault.load_into(fresh, path)
        into.append(time.process_time() - start)
        start = time.process_time()
        statevault.save(fresh, target, fsync=False)
        saves.append(time.process_time() - start)
    os.unlink(target)
    sys.stdout.write(
        f"{label}: load_into {statistics.median(into) * 1e3:.1f} ms, "
        f"save {statistics.median(saves) * 1e3:.1f} ms (CPU, median of {runs})\n"
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
