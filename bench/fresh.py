"""Fresh-process rows: what a one-shot script or CLI call pays before and around its work.

Each sample is a new interpreter (``sys.executable``) that imports torch untimed, then times
one statement; the row is the median of the samples. Import rows compare with
``import safetensors.torch``, the peer's own import after torch.
"""

from __future__ import annotations

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
