"""``python -m bench.tools``: timings of the whole-file tools (verify, diff), for the report.

Each measurement runs in a fresh process (``measure`` subcommand) so that its peak memory
is its own: "extra MiB" is the peak resident set size above the level after imports.

    python -m bench.tools many --count 200000   # verify vs verified load, 200k tiny tensors
    python -m bench.tools large --mib 512       # diff vs verify of both, two ~512 MiB files
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure(operation: str, paths: list[str]) -> dict[str, Any]:
    """Run one operation in this process; its seconds and peak extra RSS."""
    import torch  # noqa: F401  (imported before the baseline, as the CLI does)

    import statevault

    before = _status_mib("VmRSS")
    start = time.perf_counter()
    if operation == "load":
        statevault.load(paths[0])
        result: Any = None
    elif operation == "verify":
        result = [statevault.verify(p).ok for p in paths]
    elif operation == "diff":
        result = statevault.diff(paths[0], paths[1]).ok
    else:
        raise SystemExit(f"unknown operation {operation}")
    seconds = time.perf_counter() - start
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent
    peak = _status_mib("VmHWM")
    return {"seconds": seconds, "extra_mib": max(0.0, peak - before), "result": result}


def _run(operation: str, *paths: Path, runs: int) -> dict[str, Any]:
    results = []
    for _ in range(runs):
        done = subprocess.run(
            [sys.executable, "-m", "bench.tools", "measure", operation, *map(str, paths)],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}"},
        )
        results.append(json.loads(done.stdout))
    return {
        "seconds": statistics.median(r["seconds"] for r in results),
        "extra_mib": max(r["extra_mib"] for r in results),
        "result": results[0]["result"],
    }


def _zero_data(path: Path) -> None:
    """Overwrite every tensor byte with zeros (header intact): every checksum fails."""
    import statevault

    with statevault.Checkpoint(path) as opened:
        start = opened.reader.header.data_offset
    size = path.stat().st_size
    with path.open("r+b") as handle:
        handle.seek(start)
        handle.write(bytes(size - start))


def many(count: int, runs: int, directory: Path) -> None:
    import torch

    import statevault

    path = directory / "many.safetensors"
    statevault.save({f"layers.{i}.w": torch.full((4,), float(i)) for i in range(count)}, path)
    rows = {
        "verified load, intact": _run("load", path, runs=runs),
        "verify, intact": _run("verify", path, runs=runs),
        "verify, intact, twice": _run("verify", path, path, runs=runs),
        "diff with itself": _run("diff", path, path, runs=runs),
    }
    _zero_data(path)
    rows["verify, every tensor zeroed"] = _run("verify", path, runs=runs)
    base = rows["verified load, intact"]["seconds"]
    print(f"{count} tensors of 4 float32, {path.stat().st_size / 2**20:.1f} MiB file")
    for name, row in rows.items():
        print(
            f"  {name:<30} {row['seconds']:7.3f} s  {row['seconds'] / base:5.2f}x load  "
            f"peak extra {row['extra_mib']:6.1f} MiB"
        )


def large(mib: int, runs: int, directory: Path) -> None:
    import torch

    import statevault

    count = 8
    numel = (mib << 20) // 4 // count
    generator = torch.Generator().manual_seed(0)
    state = {f"w{i}": torch.randn(numel, generator=generator) for i in range(count)}
    a, copy, b = directory / "a.sv", directory / "copy.sv", directory / "b.sv"
    statevault.save(state, a)
    shutil.copyfile(a, copy)
    statevault.save({k: v + 1e-3 for k, v in state.items()}, b)
    del state
    rows = {
        "verify a and copy": _run("verify", a, copy, runs=runs),
        "diff a copy (equal)": _run("diff", a, copy, runs=runs),
        "verify a and b": _run("verify", a, b, runs=runs),
        "diff a b (every value differs)": _run("diff", a, b, runs=runs),
    }
    print(f"two files of {mib} MiB ({count} float32 tensors each)")
    for name, row in rows.items():
        print(
            f"  {name:<32} {row['seconds']:7.3f} s  peak extra {row['extra_mib']:6.1f} MiB  "
            f"result {row['result']}"
        )
    for diff_row, verify_row in (("diff a copy (equal)", "verify a and copy"),
                                  ("diff a b (every value differs)", "verify a and b")):  # fmt: skip
        ratio = rows[diff_row]["seconds"] / rows[verify_row]["seconds"]
        print(f"  {diff_row}: {ratio:.2f}x the time of verifying both files")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.tools")
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("measure")
    one.add_argument("operation")
    one.add_argument("paths", nargs="+")
    p_many = sub.add_parser("many")
    p_many.add_argument("--count", type=int, default=200_000)
    p_many.add_argument("--runs", type=int, default=3)
    p_large = sub.add_parser("large")
    p_large.add_argument("--mib", type=int, default=512)
    p_large.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if args.command == "measure":
        print(json.dumps(measure(args.operation, args.paths)))
        return
    with tempfile.TemporaryDirectory(prefix="statevault-bench-tools-") as directory:
        if args.command == "many":
            many(args.count, args.runs, Path(directory))
        else:
            large(args.mib, args.runs, Path(directory))


if __name__ == "__main__":
    main()
