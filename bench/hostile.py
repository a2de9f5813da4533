"""What hostile headers cost the readers: time and peak memory, under an address-space limit.

    python -m bench.hostile                 # every case, 2 GiB limit
    python -m bench.hostile --case tensors-200k --limit-gib 2

Each (case, operation) runs in a fresh subprocess that sets ``RLIMIT_AS`` before importing
statevault, so a reader that needs more memory than the limit fails with MemoryError (or
worse) instead of swapping; the table shows the exception each run ended with. Peak memory
is ``VmHWM`` (whole process) and that peak minus the level after imports.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

HEADER_BYTES = 100_000_000  # the largest header any reader accepts


def _container(header: str, data: bytes = b"") -> bytes:
    body = header.encode()
    body += b" " * (-len(body) % 8)
    return len(body).to_bytes(8, "little") + body + data


def _repeat_to(head: str, item: str, tail: str, size: int) -> str:
    count = (size - len(head) - len(tail)) // (len(item) + 1)
    return head + ",".join([item] * count) + tail


def _members(size: int) -> Iterator[str]:
    used, i = 0, 0
    while True:
        member = f'"k{i}":{{}}'
        used += len(member) + 1
        if used > size:
            return
        yield member
        i += 1


def _tensors(count: int) -> bytes:
    entries = ",".join(
        f'"t{i}":{{"dtype":"F32","shape":[1],"data_offsets":[{4 * i},{4 * i + 4}]}}'
        for i in range(count)
    )
    return _container("{" + entries + "}", bytes(4 * count))


def _format2_tree(tree: str) -> bytes:
    """A format-2 file (correct header digest, no tensors) whose tree member is ``tree``."""
    from statevault.fileformat import checksums
    from statevault.fileformat.metadata import TREE_KEY

    def build(digest: str) -> bytes:
        vault = json.dumps(
            '{"header_digest":"' + digest + '","version":2,"aliases":{},"dtypes":{}}'
        )
        return _container(
            f'{{"__metadata__":{{"statevault":{vault},"{TREE_KEY}":{json.dumps(tree)}}}}}'
        )

    return build(checksums.digest(build(checksums.PLACEHOLDER)))


CASES: dict[str, Callable[[], bytes]] = {
    "empty-objects-array": lambda: _container(_repeat_to("[", "{}", "]", HEADER_BYTES - 16)),
    "empty-objects-members": lambda: _container("{" + ",".join(_members(HEADER_BYTES - 16)) + "}"),
    "metadata-list-of-empty": lambda: _container(
        _repeat_to('{"__metadata__":{"x":[', "{}", "]}}", HEADER_BYTES - 16)
    ),
    "int-list-in-tensor": lambda: _container(
        _repeat_to(
            '{"t":{"dtype":"F32","shape":[',
            "1000000",
            '],"data_offsets":[0,4]}}',
            HEADER_BYTES - 16,
        )
    ),
    "tree-of-empty-pairs": lambda: _format2_tree(
        _repeat_to('{"dict":[', "[]", "]}", HEADER_BYTES - 400)
    ),
    "tensors-200k": lambda: _tensors(200_000),
    "tensors-1m": lambda: _tensors(1_000_000),
}
OPERATIONS = ("load", "verify", "inspect")


def _high_water() -> int:
    """Peak resident KiB of this process (VmHWM: unlike ru_maxrss, not inherited through
    fork and exec from the parent that built the test files)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def run_one(operation: str, path: str, limit_gib: float) -> None:
    """In the subprocess: limit memory, import, run, print one JSON line."""
    limit = int(limit_gib * (1 << 30))
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import statevault

    base = _high_water()
    start = time.perf_counter()
    outcome = "ok"
    try:
        result = getattr(statevault, operation)(path)
        if operation == "verify" and not result.ok:
            outcome = "report: " + str(result.header_error)[:150]
    except BaseException as exc:  # the point is to see what it ends with
        outcome = f"{type(exc).__name__}: {str(exc)[:150]}"
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak_mib": peak / 1024,
                "extra_mib": (peak - base) / 1024,
                "outcome": outcome,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--case", action="append", choices=sorted(CASES))
    parser.add_argument("--operation", action="append", choices=OPERATIONS)
    parser.add_argument("--limit-gib", type=float, default=2.0)
    parser.add_argument("--run", nargs=2, metavar=("OPERATION", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        run_one(args.run[0], args.run[1], args.limit_gib)
        return
    print("| case | header MB | operation | s | peak MiB | above imports MiB | outcome |")
    print("|---|---:|---|---:|---:|---:|---|")
    with tempfile.TemporaryDirectory() as scratch:
        for case in args.case or CASES:
            path = Path(scratch) / f"{case}.safetensors"
            path.write_bytes(CASES[case]())
            header_mb = int.from_bytes(path.read_bytes()[:8], "little") / 1e6
            for operation in args.operation or OPERATIONS:
                done = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "bench.hostile",
                        "--run",
                        operation,
                        str(path),
                        "--limit-gib",
                        str(args.limit_gib),
                    ],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                lines = done.stdout.strip().splitlines()
                if done.returncode or not lines:
                    tail = (done.stderr.strip().splitlines() or ["?"])[-1]
                    print(
                        f"| {case} | {header_mb:.1f} | {operation} | | | | exit {done.returncode}: {tail[:120]} |"
                    )
                    continue
                row = json.loads(lines[-1])
                print(
                    f"| {case} | {header_mb:.1f} | {operation} | {row['seconds']:.2f} | "
                    f"{row['peak_mib']:.0f} | {row['extra_mib']:.0f} | {row['outcome']} |",
                    flush=True,
                )
            path.unlink()


if __name__ == "__main__":
    main()
