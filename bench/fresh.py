"""Fresh-process rows: what a one-shot script or CLI call pays before and around its work.

Each sample is a new interpreter (``sys.executable``) that imports torch untimed, then times
one statement; the row is the median of the samples. Import rows compare with
``import safetensors.torch``, the peer's own import after torch. Build rows import every
library untimed too, then time building the model and loading its (page-cached) file, as a
one-shot inference script does: no thread pool, allocator arena or page exists yet. Beside
them, the floor: allocating the same bytes and filling them (huge pages, every core).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

IMPORTS = {
    "import safetensors.torch": "import safetensors.torch",
    "import statevault": "import statevault",
    "import statevault + first load_into name": "from statevault import load_into",
}
PEER = "import safetensors.torch"

_TIMER = """
import sys, time
sys.path.insert(0, {src!r})
import torch
start = time.perf_counter()
{statement}
print(time.perf_counter() - start)
"""


def _one_sample(statement: str, src: Path) -> float:
    script = _TIMER.format(src=str(src), statement=statement)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=300
    )
    return float(result.stdout.strip().splitlines()[-1])


def import_times(src: Path, samples: int) -> dict[str, dict[str, Any]]:
    """Each import statement's samples, interleaved so load drifts hit every row alike."""
    times: dict[str, list[float]] = {name: [] for name in IMPORTS}
    for _ in range(samples):
        for name, statement in IMPORTS.items():
            times[name].append(_one_sample(statement, src))
    return {name: {"times": t, "median": statistics.median(t)} for name, t in times.items()}


def render_imports(section: dict[str, Any]) -> str:
    """The import table of ``{"rows": import_times(...), "samples": n}``."""
    rows, samples = section["rows"], section["samples"]
    peer = float(rows[PEER]["median"])
    lines = [
        "### Import time after torch (fresh process per sample)",
        "",
        f"Median of {samples} fresh interpreters, each importing torch untimed first "
        f"({os.cpu_count()} CPUs).",
        "",
        "| case | median ms | vs safetensors |",
        "|---|---:|---:|",
    ]
    for name, row in rows.items():
        median = float(row["median"])
        ratio = "" if name == PEER else f"{median / peer:.2f}x its time"
        lines.append(f"| {name} | {1000 * median:.1f} | {ratio} |")
    return "\n".join(lines) + "\n"


# Each build statement runs with these names bound: torch, statevault, build (bench.models),
# load_model (safetensors.torch), KIND, CONFIG, NBYTES, FILES.
BUILDS = {
    "raw allocate + fill the same bytes": (
        "buffer = torch.empty(NBYTES, dtype=torch.uint8); buffer.fill_(1)"
    ),
    "Model() + torch.load(mmap) + load_state_dict": (
        "model = build(KIND, CONFIG); model.load_state_dict("
        "torch.load(FILES['torch'], mmap=True, weights_only=True))"
    ),
    "Model() + safetensors load_model": (
        "model = build(KIND, CONFIG); load_model(model, FILES['safetensors'])"
    ),
    "statevault build_model": (
        "model = statevault.build_model(lambda: build(KIND, CONFIG), FILES['statevault'])"
    ),
    "statevault build_model (verify=False)": (
        "model = statevault.build_model(lambda: build(KIND, CONFIG), FILES['statevault'], "
        "verify=False)"
    ),
}

_BUILD = """
import json, sys, time
sys.path[:0] = [{src!r}, {root!r}]
import torch
import statevault
from safetensors.torch import load_model
from bench.measure import peak_during
from bench.models import build
KIND, CONFIG, NBYTES, FILES = {kind!r}, {config!r}, {nbytes!r}, {files!r}
statement = {statement!r}
if {memory!r}:
    peak = peak_during(lambda: exec(statement))
    print(json.dumps({{"anon": peak.anon, "file": peak.file}}))
else:
    start = time.perf_counter()
    exec(statement)
    print(json.dumps({{"seconds": time.perf_counter() - start}}))
"""


def _build_sample(script: str, **values: Any) -> dict[str, Any]:
    code = _BUILD.format(**values, statement=script)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=600
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def build_times(
    src: Path, kind: str, config: dict[str, int], nbytes: int, files: dict[str, str], samples: int
) -> dict[str, dict[str, Any]]:
    """Each build row's timed samples (interleaved) and, from one more sample, its peak memory.

    Rows are keyed as ``python -m bench`` keys its in-process rows; a failed row reports its
    error as they do.
    """
    for path in files.values():  # warm: these rows measure the process, not the disk
        with open(path, "rb") as file:
            while file.read(8 << 20):
                pass
    values = {
        "src": str(src),
        "root": str(src.parent),
        "kind": kind,
        "config": config,
        "nbytes": nbytes,
        "files": files,
    }
    rows: dict[str, dict[str, Any]] = {name: {"times": []} for name in BUILDS}
    for _ in range(samples):
        for name, script in BUILDS.items():
            if "error" not in rows[name]:
                try:
                    rows[name]["times"].append(
                        _build_sample(script, **values, memory=False)["seconds"]
                    )
                except subprocess.CalledProcessError as exc:
                    rows[name] = {"error": exc.stderr.strip().splitlines()[-1]}
    for name, script in BUILDS.items():
        if "error" not in rows[name]:
            rows[name].update(_build_sample(script, **values, memory=True))
            rows[name]["median"] = statistics.median(rows[name]["times"])
    return rows
