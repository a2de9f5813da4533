"""A/B of format 3's block size and the cold-read options, for a ~1 GiB state.

``python -m bench.block_ab [--mib 1024] [--runs 5]``: the same state (Linear(2048, 2048) +
LayerNorm layers, as in issue #12) saved once per block size; each case is loaded into an
existing model in a fresh forked process, warm (pages cached) and cold (the file's pages
dropped with ``posix_fadvise(DONTNEED)`` just before each run), verified and not; medians.
Also times the raw limits of the same run: a sequential 8 MiB-read of the file (cold) and
two threads reading the page cache (warm). The figures behind ``metadata.BLOCK_BYTES`` and
the cold-read choices in ``tuning``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20


def model(layers: int) -> Any:
    from torch import nn

    return nn.Sequential(
        *[nn.Sequential(nn.Linear(2048, 2048), nn.LayerNorm(2048)) for _ in range(layers)]
    )


def drop_cache(path: str) -> None:
    """Evict the file's pages (clean pages go at once; the file was synced when saved)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _raw_sequential(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    buffer = bytearray(8 * MIB)
    try:
        while os.readv(fd, [buffer]):
            pass
    finally:
        os.close(fd)


def _case(path: str, layers: int, verify: bool | None, cold: bool, runs: int) -> list[float]:
    """Median input: ``runs`` timed loads in this (forked) process; verify None = raw read."""
    import torch

    import statevault

    net = model(layers)
    with torch.no_grad():
        for tensor in net.state_dict().values():
            tensor.zero_()
    times = []
    for _ in range(runs + 1):  # the first run warms the process (thread pool, page cache)
        if cold:
            drop_cache(path)
        start = time.perf_counter()
        if verify is None:
            _raw_sequential(path)
        else:
            statevault.load_into(net, path, verify=verify)
        times.append(time.perf_counter() - start)
    return times[1:]


def _advise_before_each_piece() -> None:
    """The variant measured and dropped: WILLNEED on each piece's bytes before reading it."""
    from statevault.engine import reader

    plain = reader.read_blocks

    def advised(
        file: Any, base: int, name: str, nbytes: int, view: Any, at: int, *rest: Any, **kw: Any
    ) -> None:
        os.posix_fadvise(file.fd, base + at, len(view), os.POSIX_FADV_WILLNEED)
        plain(file, base, name, nbytes, view, at, *rest, **kw)

    reader.read_blocks = advised


def _forked(*args: Any) -> list[float]:
    with multiprocessing.get_context("fork").Pool(1) as pool:
        result: list[float] = pool.apply(_case, args)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.block_ab")
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--blocks", default="4,8,16", help="block sizes in MiB")
    parser.add_argument("--dir")
    parser.add_argument(
        "--willneed", type=int, choices=(0, 1), help="1: posix_fadvise(WILLNEED) each piece first"
    )
    parser.add_argument("--request-kib", type=int, help="override VERIFY_CHUNK_BYTES")
    parser.add_argument("--threads", type=int, help="override MAX_THREADS (and the CPU count)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    import torch

    from statevault.engine import tuning

    if args.willneed:
        _advise_before_each_piece()
    if args.request_kib:
        tuning.VERIFY_CHUNK_BYTES = args.request_kib << 10
    if args.threads:
        tuning.MAX_THREADS = args.threads
        os.cpu_count = lambda: args.threads  # type: ignore[assignment]

    import statevault
    from statevault.fileformat import metadata

    layers = max(1, args.mib // 16)
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="statevault-block-") as tmp:
        net = model(layers)
        paths = {}
        for mib in [int(b) for b in args.blocks.split(",")]:
            metadata.BLOCK_BYTES = mib * MIB
            paths[mib] = str(Path(tmp) / f"block{mib}.safetensors")
            statevault.save(net, paths[mib])  # fsync'd: its pages are clean, so droppable
        del net
        print(
            f"{layers} layers, {os.path.getsize(paths[mib]) / MIB:.0f} MiB, torch {torch.__version__}"
        )
        print("| case | warm s | cold s |\n|---|---:|---:|")
        first = next(iter(paths.values()))
        rows = [("raw sequential read (8 MiB)", first, None)]
        for mib, path in paths.items():
            rows += [(f"load_into, {mib} MiB blocks", path, True)]
        rows += [("load_into verify=False", first, False)]
        for name, path, verify in rows:
            warm = statistics.median(_forked(path, layers, verify, False, args.runs))
            cold = statistics.median(_forked(path, layers, verify, True, args.runs))
            print(f"| {name} | {warm:.3f} | {cold:.3f} |", flush=True)


if __name__ == "__main__":
    main()
