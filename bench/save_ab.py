"""In-process A/B of the save writer: staged (hash what is written) vs the previous one.

The previous writer hashed each chunk of the caller's tensor and then wrote the tensor's
memory, so a tensor changed in place between the two left a digest that did not match the
file. The current writer copies each chunk into a reused staging buffer, hashes it there
and writes it from there. This script keeps a copy of the previous writer (``unstaged``,
for comparison only) and alternates the two, with safetensors ``save_file`` as the peer,
in one process so that the machine's noise hits all of them alike.

    python -m bench.save_ab --large-mib 512 --small-count 20000 --rounds 5
    python -m bench.save_ab --peak staged      # peak extra RssAnon of one save, fresh process
    python -m bench.save_ab --peak staged --large-mib 0   # the same, small tensors only
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

import statevault
from statevault.engine import tuning
from statevault.engine.memory import ByteBuffer, tensor_memory
from statevault.engine.storage import LOCAL_STORAGE, PendingObject
from statevault.engine.writer import Source, plan_write_runs
from statevault.fileformat import checksums
from statevault.fileformat.table import TensorEntry
from statevault.saving.save import plan_save


def _cpu(source: Source) -> torch.Tensor:
    return source if isinstance(source, torch.Tensor) else source()


def _unstaged_write_data(
    pending: PendingObject,
    offset: int,
    entries: Sequence[TensorEntry],
    sources: Sequence[Source],
    record: Callable[[int, str], None] | None,
) -> None:
    """The previous data writer: hash the caller's memory, then write that memory."""
    pool = ThreadPoolExecutor(max_workers=1)
    queued: deque[tuple[Future[None], list[torch.Tensor]]] = deque()

    def wait_oldest() -> None:
        queued.popleft()[0].result()

    try:
        for run in plan_write_runs([entry.nbytes for entry in entries]):
            if len(run) == 1 and entries[run[0]].nbytes >= tuning.SMALL_WRITE_BYTES:
                while queued:
                    wait_oldest()
                view = tensor_memory(tensor := _cpu(sources[run[0]]))
                hasher = checksums.new_hasher()
                for start in range(0, len(view), 8 << 20):
                    chunk = view[start : start + (8 << 20)]
                    hasher.update(chunk)
                    pending.write(offset, [chunk])
                    offset += len(chunk)
                del tensor
                if record is not None:
                    record(run[0], hasher.hexdigest())
                continue
            tensors = [_cpu(sources[index]) for index in run]
            buffers: list[ByteBuffer] = [tensor_memory(t) for t in tensors if t.nbytes]
            if record is not None:
                for index, tensor in zip(run, tensors, strict=True):
                    record(index, checksums.digest(tensor_memory(tensor)))
            queued.append((pool.submit(pending.write, offset, buffers), tensors))
            offset += sum(len(buffer) for buffer in buffers)
            while len(queued) > tuning.WRITE_AHEAD:
                wait_oldest()
        while queued:
            wait_oldest()
    finally:
        pool.shutdown(wait=True)


def _save_unstaged(state: dict[str, torch.Tensor], path: Path) -> None:
    """``statevault.save(state, path, fsync=False)`` with the previous data writer."""
    entries, sources, header = plan_save(state, {}, True)
    pending = LOCAL_STORAGE.begin(path)
    try:
        _unstaged_write_data(pending, header.size, entries, sources, header.put)
        pending.write(0, [memoryview(header.finish())])
        pending.commit(durable=False)
    except BaseException:
        pending.abort()
        raise


def _states(
    large_mib: int, large_count: int, small_count: int
) -> dict[str, dict[str, torch.Tensor]]:
    each = (large_mib << 20) // 4 // max(1, large_count)
    large = {f"w{i}": torch.ones(each) for i in range(large_count)}
    small = {f"t{i}": torch.ones(2560) for i in range(small_count)}  # 10 KiB each
    states = {
        f"{large_mib} MiB in {large_count} tensor(s)": large,
        f"{small_count} x 10 KiB": small,
    }
    return {label: state for label, state in states.items() if not label.startswith("0 ")}


def _save(variant: str, state: dict[str, torch.Tensor], path: Path) -> None:
    if variant == "safetensors":
        from safetensors.torch import save_file

        save_file(state, path)
        return
    if variant == "unstaged":
        _save_unstaged(state, path)
    else:
        statevault.save(state, path, fsync=False)


def _rss_anon() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large-mib", type=int, default=512)
    parser.add_argument("--large-count", type=int, default=1, help="tensors in the large state")
    parser.add_argument("--small-count", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--peak", choices=["staged", "unstaged", "safetensors"])
    args = parser.parse_args()
    from bench.measure import peak_during

    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as directory:
        path = Path(directory) / "ab.safetensors"
        for label, state in _states(args.large_mib, args.large_count, args.small_count).items():
            nbytes = sum(t.nbytes for t in state.values())
            if args.peak:
                gc.collect()
                peak = peak_during(lambda s=state: _save(args.peak, s, path))  # type: ignore[misc]
                print(
                    f"{label}: {args.peak} peak extra anon {peak.anon / 2**20:.1f} MiB "
                    f"({100 * peak.anon / nbytes:.1f}% of {nbytes / 2**20:.0f} MiB)"
                )
                path.unlink()
                continue
            times: dict[str, list[tuple[float, float]]] = {
                "safetensors": [],
                "unstaged": [],
                "staged": [],
            }
            names = list(times)
            for round_ in range(args.rounds + 1):  # the first round warms up and is dropped
                # Each round starts with another variant: the page cache's writeback favours
                # no one (a save right after another's sync runs differently).
                for variant in names[round_ % 3 :] + names[: round_ % 3]:
                    seconds = times[variant]
                    os.sync()
                    gc.collect()
                    began, cpu = time.perf_counter(), time.process_time()
                    _save(variant, state, path)
                    seconds.append((time.perf_counter() - began, time.process_time() - cpu))
                    path.unlink()
            wall = {v: statistics.median(s[0] for s in runs[1:]) for v, runs in times.items()}
            cpu = {v: statistics.median(s[1] for s in runs[1:]) for v, runs in times.items()}
            fastest = {v: min(s[0] for s in runs[1:]) for v, runs in times.items()}
            print(f"{label} ({nbytes / 2**20:.0f} MiB), median (min) of {args.rounds}:")
            for variant in times:
                print(
                    f"  {variant:12s} {wall[variant]:.3f} s ({fastest[variant]:.3f} s), "
                    f"CPU {cpu[variant]:.3f} s   vs safetensors "
                    f"{wall['safetensors'] / wall[variant]:.2f}x "
                    f"({fastest['safetensors'] / fastest[variant]:.2f}x)"
                )
            print(
                f"  staged / unstaged: time {wall['staged'] / wall['unstaged']:.3f} "
                f"(min {fastest['staged'] / fastest['unstaged']:.3f}), "
                f"CPU {cpu['staged'] / cpu['unstaged']:.3f}"
            )


if __name__ == "__main__":
    main()
