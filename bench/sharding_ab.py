"""In-process A/B for issue 13: sharded vs one-file save and load of the same state, sliced
reads against safetensors' ``get_slice``, and the peak memory of each load.

Variants alternate within each round (each round starts with another one) so that the
machine's noise hits all of them alike; the first round warms up and is dropped; figures are
medians, ratios are other / one-file (<= 1.05 is the target for shards) and safetensors /
statevault for slices (>= 1 means statevault is at least as fast). Files are read from the
page cache (they were just written): this measures the engine, not the disk.

    python -m bench.sharding_ab --gib 2 --shard-size 500MB --rounds 3
    python -m bench.sharding_ab --gib 0.5 --rounds 3      # when time or memory is short
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

import statevault
import statevault.safetensors as dropin
from bench.measure import peak_during

ROW_FLOATS = 4096  # one row of the large tensor: 16 KiB


def _state(gib: float, tensors: int) -> dict[str, torch.Tensor]:
    """``tensors`` float32 matrices totalling ``gib`` GiB (rows of ROW_FLOATS)."""
    rows = int(gib * 2**30) // 4 // ROW_FLOATS // tensors
    generator = torch.Generator().manual_seed(0)
    return {
        f"layers.{i}.weight": torch.rand(rows, ROW_FLOATS, generator=generator)
        for i in range(tensors)
    }


def _rounds(variants: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median seconds of each variant over ``rounds`` rounds after one warm-up round."""
    names = list(variants)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(rounds + 1):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            gc.collect()
            began = time.perf_counter()
            result = variants[name]()
            seconds[name].append(time.perf_counter() - began)
            del result
    return {name: statistics.median(times[1:]) for name, times in seconds.items()}


def _save_rows(state: dict[str, torch.Tensor], folder: Path, shard: str, rounds: int) -> None:
    one, sharded, peer = folder / "one.safetensors", folder / "model.safetensors", folder / "st"
    peer.mkdir(exist_ok=True)

    def save_peer() -> None:
        from safetensors.torch import save_file

        save_file(state, peer / "model.safetensors")

    medians = _rounds(
        {
            "one file": lambda: statevault.save(state, one, fsync=False),
            f"shards of {shard}": lambda: statevault.save(
                state, sharded, max_shard_size=shard, fsync=False
            ),
            "safetensors save_file": save_peer,
        },
        rounds,
    )
    _print("save (fsync=False)", medians)


def _load_rows(folder: Path, rounds: int) -> None:
    one, index = folder / "one.safetensors", folder / "model.safetensors.index.json"
    shards = len([p for p in folder.iterdir() if p.name.startswith("model-")])
    medians = _rounds(
        {
            "one file": lambda: statevault.load(one),
            f"{shards} shards": lambda: statevault.load(index),
            "safetensors load_file": lambda: _peer_load(one),
        },
        rounds,
    )
    _print("load (page cache warm)", medians)
    with statevault.Checkpoint(one) as ckpt:
        nbytes = sum(info.nbytes for info in ckpt.tensors.values())
    for label, source in (("one file", one), (f"{shards} shards", index)):
        # a fresh process each: freed memory kept by this one's allocator would hide the peak
        command = [sys.executable, "-m", "bench.sharding_ab", "--peak-of", str(source)]
        anon = int(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
        print(
            f"  peak extra anon memory, {label}: {anon / 2**20:.0f} MiB "
            f"({anon / nbytes:.2f}x the state)"
        )


def _peer_load(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    # mmap-backed tensors: touch every byte, as statevault's read does
    tensors = load_file(path)
    for tensor in tensors.values():
        tensor.sum()
    return tensors


def _slice_rows(folder: Path, block: int, rounds: int) -> None:
    from safetensors import safe_open

    path = folder / "one.safetensors"
    name = "layers.0.weight"
    with statevault.Checkpoint(path) as ckpt:
        rows = ckpt.signature(name)[0][0]
    start = rows // 2  # a block from the middle of the tensor

    # Each opens the file, reads the block and touches one element per 4 KiB page of it:
    # safetensors returns a view of its memory map, whose pages are only read when touched;
    # summing every element instead would measure torch's sum more than the read.
    def ours() -> torch.Tensor:
        with statevault.Checkpoint(path) as ckpt:
            part = ckpt.get_slice(name)[start : start + block]
        _touch(part)
        return part

    def ours_dropin() -> torch.Tensor:
        with dropin.safe_open(path, framework="pt") as opened:
            part = opened.get_slice(name)[start : start + block]
        _touch(part)
        return part

    def theirs() -> torch.Tensor:
        with safe_open(path, framework="pt") as opened:
            part = opened.get_slice(name)[start : start + block]
        _touch(part)
        return part

    assert torch.equal(ours(), theirs()) and torch.equal(ours_dropin(), theirs())
    medians = _rounds(
        {
            "statevault Checkpoint.get_slice": ours,
            "statevault.safetensors safe_open": ours_dropin,
            "safetensors safe_open": theirs,
        },
        rounds,
    )
    mib = block * ROW_FLOATS * 4 / 2**20
    _print(f"slice of {block} rows ({mib:.0f} MiB) from a {rows}-row tensor", medians, peer=True)


def _touch(tensor: torch.Tensor) -> None:
    """Read one element of every 4 KiB page of ``tensor`` (a float32 tensor)."""
    tensor.reshape(-1)[::1024].sum()


def _print(title: str, medians: dict[str, float], *, peer: bool = False) -> None:
    print(f"{title}, median seconds:")
    names = list(medians)
    base = medians[names[-1]] if peer else medians[names[0]]
    for name, seconds in medians.items():
        ratio = base / seconds if peer else seconds / base
        what = "safetensors / this" if peer else "this / one file"
        print(f"  {name:34s} {seconds:8.4f} s   {what}: {ratio:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=2.0, help="size of the state")
    parser.add_argument("--tensors", type=int, default=16)
    parser.add_argument("--shard-size", default="500MB")
    parser.add_argument("--slice-rows", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--peak-of", help="(internal) print the peak extra RssAnon of a load")
    args = parser.parse_args()
    if args.peak_of:
        print(peak_during(lambda: statevault.load(args.peak_of)).anon)
        return
    state = _state(args.gib, args.tensors)
    nbytes = sum(t.nbytes for t in state.values())
    print(
        f"state: {len(state)} tensors, {nbytes / 2**30:.2f} GiB; torch threads {torch.get_num_threads()}"
    )
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as directory:
        folder = Path(directory)
        _save_rows(state, folder, args.shard_size, args.rounds)
        del state
        gc.collect()
        _load_rows(folder, args.rounds)
        _slice_rows(folder, args.slice_rows, max(args.rounds, 20))


if __name__ == "__main__":
    main()
