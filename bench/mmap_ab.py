"""Memory-mapped loads (``mmap=True``): memory shared between processes, and time to a first
forward pass beside ``transformers``' ``from_pretrained``.

Every number comes from fresh processes (``sys.executable``; imports before any timer):

- **shared**: N processes (4) load one file at the same time, mapped (``statevault.load(path,
  mmap=True)``) or copied (``statevault.load(path)``), both verified, and hold what they
  loaded while this process counts what they added: the file's pages in the page cache
  (``mincore``) plus each process's growth in anonymous memory (``RssAnon``). Beside that
  total: ``/proc/meminfo`` ``Cached`` growth (the whole machine's page cache, so other work
  on it shows there too) and the sum of the processes' ``Pss`` of their mappings of the file
  (``/proc/self/smaps``: each shared page charged in equal parts). The file's pages are
  dropped (``POSIX_FADV_DONTNEED``) before each measurement.
- **bert**: a BERT-base-sized ``BertModel(BertConfig())`` (nothing downloaded), saved once with
  ``save_pretrained``; each sample is one fresh interpreter timing build + load + the first
  forward pass (batch 1, 128 tokens, ``torch.no_grad``) with the file in the page cache. Rows
  are interleaved sample by sample; the table shows medians.

Run ``python -m bench.mmap_ab --mib 1024 --runs 5``, or as the "Memory-mapped loads" section
of ``python -m bench`` (``--only mmap`` runs only it).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

MIB = 1 << 20
ROOT = Path(__file__).resolve().parent.parent

_HOLDER = """
import json, sys
sys.path.insert(0, {src!r})
import torch, statevault
load = statevault.load  # its modules imported before the first count

def status(field):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(field + ":"))

def file_pss(path):  # Pss of this process's mappings of path (/proc/self/smaps), bytes
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            first, _, rest = line.partition(" ")
            if "-" in first and not first.endswith(":"):
                inside = rest.split()[-1:] == [path]
            elif inside and first == "Pss:":
                total += int(rest.split()[0]) * 1024
    return total

before = status("RssAnon")
state = load({path!r}, mmap={mmap})
anon = status("RssAnon") - before
print(json.dumps({{"anon": anon}}), flush=True)
sys.stdin.readline()  # all loaded: now every process maps the file, so Pss is shared out
print(json.dumps({{"pss": file_pss({path!r})}}), flush=True)
sys.stdin.read()  # hold the state until the parent has counted
"""

_BERT = """
import sys, time, json
sys.path.insert(0, {src!r})
import torch, statevault, transformers
from transformers import BertConfig, BertModel
statevault.build_model  # import its modules now, untimed
ids = torch.randint(0, 30000, (1, 128), generator=torch.Generator().manual_seed(0))
start = time.perf_counter()
{statement}
loaded = time.perf_counter() - start
model.eval()
with torch.no_grad():
    out = model(ids).last_hidden_state
elapsed = time.perf_counter() - start
print(json.dumps({{"seconds": elapsed, "load": loaded, "sum": float(out.double().abs().sum())}}))
"""

BERT_CASES = {
    "transformers from_pretrained + first forward": (
        "model = BertModel.from_pretrained({folder!r})"
    ),
    "statevault build_model(mmap=True) + first forward": (
        "model = statevault.build_model(BertModel, {folder!r}, "
        "args=(BertConfig.from_pretrained({folder!r}),), mmap=True)"
    ),
    "statevault build_model + first forward": (
        "model = statevault.build_model(BertModel, {folder!r}, "
        "args=(BertConfig.from_pretrained({folder!r}),))"
    ),
}
BERT_PEER = "transformers from_pretrained + first forward"


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int]
    libc.mmap.argtypes += [ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    return libc


def cached_bytes(path: Path) -> int:
    """How many bytes of ``path`` are in the page cache now (``mincore`` of a fresh mapping)."""
    libc, size, page = _libc(), path.stat().st_size, os.sysconf("SC_PAGE_SIZE")
    fd = os.open(path, os.O_RDONLY)
    try:
        address = libc.mmap(None, size, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
        if address in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap failed")
        try:
            vector = ctypes.create_string_buffer(-(-size // page))
            if libc.mincore(address, size, vector) != 0:
                raise OSError(ctypes.get_errno(), "mincore failed")
            return sum(byte & 1 for byte in vector.raw) * page
        finally:
            libc.munmap(address, size)
    finally:
        os.close(fd)


def _meminfo_cached() -> int:
    with open("/proc/meminfo", encoding="ascii") as meminfo:
        return next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("Cached:"))


def drop_pages(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def shared_memory(path: Path, *, processes: int, mmap: bool) -> dict[str, Any]:
    """Start ``processes`` loaders of ``path`` at once; count what they add while all hold it."""
    drop_pages(path)
    cached_before, file_before = _meminfo_cached(), cached_bytes(path)
    script = _HOLDER.format(src=str(ROOT / "src"), path=str(path), mmap=mmap)
    children = [
        subprocess.Popen(
            [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for _ in range(processes)
    ]
    try:
        reports = [json.loads(child.stdout.readline()) for child in children]  # type: ignore[union-attr]
        file_pages = cached_bytes(path) - file_before
        cached = _meminfo_cached() - cached_before
        for child in children:
            child.stdin.write("count\n")  # type: ignore[union-attr]
            child.stdin.flush()  # type: ignore[union-attr]
        for child, report in zip(children, reports, strict=True):
            report.update(json.loads(child.stdout.readline()))  # type: ignore[union-attr]
    finally:
        for child in children:
            child.communicate(timeout=120)
    anon = sum(report["anon"] for report in reports)
    return {
        "processes": processes,
        "file_bytes": path.stat().st_size,
        "file_pages": file_pages,
        "anon": anon,
        "total": file_pages + anon,
        "cached": cached,
        "pss": sum(report["pss"] for report in reports),
    }


def bert_folder(directory: Path) -> Path:
    """A BERT-base-sized model from ``BertConfig()``, saved once with ``save_pretrained``."""
    folder = directory / "bert-base"
    if not (folder / "model.safetensors").exists():
        code = (
            "import torch; from transformers import BertConfig, BertModel; "
            f"torch.manual_seed(0); BertModel(BertConfig()).save_pretrained({str(folder)!r})"
        )
        subprocess.run([sys.executable, "-c", code], check=True, timeout=600)
    return folder


def bert_times(folder: Path, runs: int) -> dict[str, dict[str, Any]]:
    """Each BERT case's seconds over ``runs`` fresh processes, cases interleaved per run."""
    times: dict[str, list[float]] = {name: [] for name in BERT_CASES}
    loads: dict[str, list[float]] = {name: [] for name in BERT_CASES}
    sums: dict[str, float] = {}
    for run in range(runs + 1):  # run 0 warms the page cache and is not counted
        for name, statement in BERT_CASES.items():
            script = _BERT.format(
                src=str(ROOT / "src"), statement=statement.format(folder=str(folder))
            )
            result = subprocess.run(
                [sys.executable, "-c", script], capture_output=True, text=True, timeout=600
            )
            if result.returncode != 0:
                raise RuntimeError(f"{name}: {result.stderr[-2000:]}")
            row = json.loads(result.stdout.strip().splitlines()[-1])
            sums[name] = row["sum"]
            if run:
                times[name].append(row["seconds"])
                loads[name].append(row["load"])
    if len({round(value, 3) for value in sums.values()}) != 1:  # every case ran the same model
        raise RuntimeError(f"the first forward passes differ: {sums}")
    return {
        name: {
            "times": t,
            "median": statistics.median(t),
            "loads": loads[name],
            "load_median": statistics.median(loads[name]),
        }
        for name, t in times.items()
    }


def measure(path: Path, directory: Path, *, processes: int, runs: int) -> dict[str, Any]:
    """Both measurements, as ``python -m bench`` keeps them (``results["mapped"]``)."""
    shared = {
        "mapped": shared_memory(path, processes=processes, mmap=True),
        "copied": shared_memory(path, processes=processes, mmap=False),
    }
    return {"shared": shared, "bert": bert_times(bert_folder(directory), runs), "runs": runs}


def render(section: dict[str, Any]) -> str:
    """The tables of ``measure``'s result."""
    shared, bert = section["shared"], section["bert"]
    first = next(iter(shared.values()))
    size, count = first["file_bytes"], first["processes"]
    lines = [
        "### Memory-mapped loads: one file loaded by several processes at once",
        "",
        f"{count} fresh processes each load the same {size / MIB:.0f} MiB file (verified) and "
        "hold it; the file's pages were dropped from the page cache first. Added memory = the "
        "file's pages now in the page cache (mincore) + the processes' anonymous memory growth.",
        "",
        "| case | added memory MiB | x file size | file pages cached MiB | anon MiB (all) "
        "| file-mapping Pss MiB (all) | meminfo Cached MiB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    names = {"mapped": "statevault load(mmap=True)", "copied": "statevault load"}
    for key, row in shared.items():
        lines.append(
            f"| {names[key]} | {row['total'] / MIB:.0f} | {row['total'] / size:.2f}x "
            f"| {row['file_pages'] / MIB:.0f} | {row['anon'] / MIB:.0f} | {row['pss'] / MIB:.0f} "
            f"| {row['cached'] / MIB:.0f} |"
        )
    peer = bert[BERT_PEER]["median"]
    lines += [
        "",
        "### Memory-mapped loads: BERT-base build + load + first forward (fresh process each)",
        "",
        f"`BertModel(BertConfig())` saved with `save_pretrained`; median of {section['runs']} "
        "fresh interpreters per row (imports untimed, rows interleaved, file in the page "
        "cache); the first forward is batch 1 x 128 tokens. The last column is the part "
        "before the forward pass (its own median).",
        "",
        "| case | median s | vs from_pretrained | of which build + load, median s |",
        "|---|---:|---:|---:|",
    ]
    for name, row in bert.items():
        ratio = "" if name == BERT_PEER else f"{row['median'] / peer:.2f}x its time"
        load = row.get("load_median")
        lines.append(
            f"| {name} | {row['median']:.3f} | {ratio} | {'' if load is None else f'{load:.3f}'} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.mmap_ab", description=__doc__)
    parser.add_argument("--mib", type=int, default=1024, help="size of the shared file")
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--runs", type=int, default=5, help="fresh processes per BERT row")
    parser.add_argument("--dir", help="where to write files (default: a new temp dir)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="statevault-mmap-") as tmp:
        directory = Path(tmp)
        path = write_state(directory, args.mib * MIB)
        section = measure(path, directory, processes=args.processes, runs=args.runs)
        print(render(section))


def write_state(directory: Path, nbytes: int) -> Path:
    """The benchmark's LLM-like state of about ``nbytes``, saved by statevault in a child
    process (``python -m bench`` forks its cases from a process that has run no tensor op)."""
    path = directory / "shared.safetensors"
    code = (
        f"import sys; sys.path[:0] = [{str(ROOT / 'src')!r}, {str(ROOT)!r}]; import statevault; "
        "from bench.models import build, llm_config; "
        f"statevault.save(build('llm', llm_config({nbytes})), {str(path)!r})"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=1200)
    return path


if __name__ == "__main__":
    main()
