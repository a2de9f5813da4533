"""`import statevault` imports none of the package's parts nor their heavy dependencies.

Each check runs a fresh interpreter (what a CLI call or a one-shot script pays) and looks at
which modules it loaded; presence in sys.modules, never a wall-clock figure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# heavy optional dependencies, and our layers above the engine that a plain import must not load
NOT_ON_IMPORT = [
    "jinja2",
    "rich",
    "click",
    "torch.distributed",
    "statevault.tools",
    "statevault.manager",
    "statevault.loading",
    "statevault.saving",
    "statevault.readers",
    "statevault.reports",
    "statevault.engine",
    "statevault.cli",
]


def _modules_loaded_by(statement: str) -> set[str]:
    script = (
        "import sys, json\n"
        "import torch\n"
        "before = set(sys.modules)\n"
        f"{statement}\n"
        "print(json.dumps(sorted(set(sys.modules) - before)))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), *sys.path])}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout))


def _under(loaded: set[str], package: str) -> list[str]:
    return sorted(m for m in loaded if m == package or m.startswith(package + "."))


def test_import_statevault_loads_only_the_package_itself() -> None:
    loaded = _modules_loaded_by("import statevault")
    assert {m for m in loaded if m.startswith("statevault")} == {"statevault"}
    assert [m for name in NOT_ON_IMPORT for m in _under(loaded, name)] == []


@pytest.mark.parametrize("name", ["load_into", "load", "save", "build_model", "Checkpoint"])
def test_the_common_calls_load_no_tool_manager_or_report_page(name: str) -> None:
    loaded = _modules_loaded_by(f"from statevault import {name}")
    unwanted = ["jinja2", "rich", "click", "statevault.tools", "statevault.manager"]
    assert [m for package in unwanted for m in _under(loaded, package)] == []


def test_a_public_name_is_loaded_on_first_use() -> None:
    loaded = _modules_loaded_by("import statevault; statevault.verify")
    assert "statevault.tools.verification" in loaded
