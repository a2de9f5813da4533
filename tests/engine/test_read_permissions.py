"""A checkpoint this process may not read: a statevault error naming it, from API and CLI."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import statevault

SRC = str(Path(statevault.__file__).resolve().parents[1])

# Run as nobody (root bypasses permission bits); the directory is opened while still root.
UNREADABLE = textwrap.dedent(
    """
    import json, os, sys
    from click.testing import CliRunner
    import statevault
    from statevault.cli import main
    directory = os.open(sys.argv[1], os.O_RDONLY)
    if os.geteuid() == 0:
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
    os.fchdir(directory)
    try:
        statevault.load("secret.safetensors")
        case = {"loaded": True}
    except PermissionError as exc:
        case = {"type": type(exc).__name__, "errno": exc.errno, "message": str(exc),
                "cause": type(exc.__cause__).__name__,
                "ours": isinstance(exc, statevault.StateVaultError)}
    result = CliRunner().invoke(main, ["inspect", "secret.safetensors"])
    case["cli"] = [result.exit_code, result.output]
    print(json.dumps(case))
    """
)


def _as_nobody(directory: Path) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", UNREADABLE, str(directory)],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=SRC),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_an_unreadable_checkpoint_is_named_with_the_fix(tmp_path: Path) -> None:
    directory = tmp_path / "runs"
    directory.mkdir()
    secret = directory / "secret.safetensors"
    statevault.save({"w": torch.zeros(4)}, secret)
    secret.chmod(0o000)
    directory.chmod(0o755)
    if os.geteuid() != 0 and os.access(secret, os.R_OK):
        pytest.skip("cannot drop privileges and the file stays readable for this user")
    case = _as_nobody(directory)
    assert case["type"] == "CheckpointPermissionError" and case["ours"], case
    assert case["errno"] == errno.EACCES and case["cause"] == "PermissionError"
    assert case["message"].startswith("secret.safetensors: cannot be read by this process")
    assert "permissions" in case["message"]
    exit_code, output = case["cli"]
    # the CLI refuses it as a bad argument before opening it (click checks readability)
    assert exit_code == 2 and "'secret.safetensors' is not readable" in output
    assert "internal error" not in output and "Traceback" not in output
    secret.chmod(0o644)  # the fix the message points to: give read access
    assert _as_nobody(directory)["loaded"] is True
