"""The import layering of the package, checked by import-linter on every test run.

The contracts live in pyproject.toml (``[tool.importlinter]``): cli -> statevault (the
public ``__init__``) -> tools -> loading | saving -> reports -> readers -> engine ->
fileformat, with ``statevault.errors`` importable from anywhere. A module that imports a
layer above its own fails this test with the offending import chain in the message.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _lint_imports() -> str:
    beside = Path(sys.executable).with_name("lint-imports")
    found = str(beside) if beside.exists() else shutil.which("lint-imports")
    assert found is not None, "lint-imports is missing: install the dev extras (.[dev])"
    return found


def test_import_contracts_are_kept() -> None:
    # this checkout's src first, whatever package the environment has installed
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *sys.path])}
    result = subprocess.run(
        [_lint_imports(), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
