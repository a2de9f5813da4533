"""In-process A/B: statevault's calls with the cyclic GC left running vs paused around them.

statevault once switched the collector off for the whole process during its calls (another
thread then saw it off). This measures what that pause bought, on many small tensors with
a large live object graph around them (``--modules`` Linear layers, the model kept alive),
alternating the two variants in one process so that noise hits both alike. It also counts
full (generation 2) collections per call: the cost the pause avoided. A full collection
runs once enough container objects have survived into the oldest generation (a quarter of
those already there), so what a call keeps alive while it works sets how often it pays one.

    python -m bench.gc_ab --modules 10000 --rounds 7
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from torch import nn

import statevault


class _FullCollections:
    """Counts generation-2 collections while installed as a gc callback."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start" and info["generation"] == 2:
            self.count += 1


def _paused(call: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        gc.disable()
        try:
            return call()
        finally:
            gc.enable()

    return run


def _open_tree(path: Path) -> object:
    with statevault.Checkpoint(path) as checkpoint:
        return checkpoint.tree


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", type=int, default=10_000)
    parser.add_argument("--width", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    model = nn.ModuleList([nn.Linear(args.width, args.width) for _ in range(args.modules)])
    target = nn.ModuleList([nn.Linear(args.width, args.width) for _ in range(args.modules)])
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as directory:
        path = Path(directory) / "gc.safetensors"
        statevault.save(model, path)
        calls: dict[str, Callable[[], object]] = {
            "save": lambda: statevault.save(model, path, fsync=False),
            "load": lambda: statevault.load(path),
            "load_into": lambda: statevault.load_into(target, path),
            "Checkpoint().tree": lambda: _open_tree(path),
        }
        counter = _FullCollections()
        gc.callbacks.append(counter)
        print(
            f"{args.modules} modules ({2 * args.modules} tensors), "
            f"{len(gc.get_objects())} tracked objects alive; median CPU s of {args.rounds}"
        )
        for label, call in calls.items():
            seconds: dict[str, list[float]] = {"gc running": [], "gc paused": []}
            full: dict[str, list[int]] = {"gc running": [], "gc paused": []}
            variants = {"gc running": call, "gc paused": _paused(call)}
            for round_ in range(args.rounds + 1):  # the first round warms up
                order = list(variants) if round_ % 2 else list(reversed(variants))
                for variant in order:
                    counter.count = 0
                    began = time.process_time()
                    variants[variant]()
                    if round_:
                        seconds[variant].append(time.process_time() - began)
                        full[variant].append(counter.count)
            running, paused = (statistics.median(seconds[v]) for v in variants)
            per_call = sum(full["gc running"]) / len(full["gc running"])
            print(
                f"  {label:18s} gc running {running:.3f} s ({per_call:.2f} full collections a "
                f"call), paused {paused:.3f} s; running/paused {running / paused:.2f}"
            )
        gc.callbacks.remove(counter)


if __name__ == "__main__":
    main()
