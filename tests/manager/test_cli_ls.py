"""``statevault ls`` and ``DIR [--step N]`` for verify / inspect / diff."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner, Result
from tests.helpers.training_states import state_for

from statevault import CheckpointManager
from statevault.cli import main
from statevault.manager import layout


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def _run_dir(tmp_path: Path) -> Path:
    with CheckpointManager(tmp_path, max_to_keep=2, monitor="loss") as manager:
        for step, loss in [(1, 0.1), (2, 0.5), (3, 0.4)]:
            manager.save(step, state_for(step, numel=8), metrics={"loss": loss})
    return tmp_path


def test_ls_lists_steps_with_status_metrics_and_why_kept(tmp_path: Path) -> None:
    result = run("ls", _run_dir(tmp_path))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"{tmp_path}: 3 step(s), newest valid: step 3"
    row = next(line for line in lines if line.lstrip().startswith("1 "))
    assert "valid" in row and "loss=0.1" in row and "best by loss (min)" in row
    assert "latest 2" in next(line for line in lines if line.lstrip().startswith("2 "))


def test_ls_json_and_a_damaged_step(tmp_path: Path) -> None:
    _run_dir(tmp_path)
    (tmp_path / "step-3" / layout.STATE_FILE).write_bytes(b"\0" * 16)
    result = run("ls", tmp_path, "--json")
    assert result.exit_code == 1
    steps = json.loads(result.output)["steps"]
    assert [(s["step"], s["status"]) for s in steps] == [(1, "valid"), (2, "valid"), (3, "damaged")]
    assert steps[0]["metrics"] == {"loss": 0.1} and steps[0]["bytes"] > 0
    unverified = json.loads(run("ls", tmp_path, "--json", "--no-verify").output)["steps"]
    assert {s["status"] for s in unverified} == {"unverified"}


def test_verify_inspect_and_diff_take_a_run_directory(tmp_path: Path) -> None:
    _run_dir(tmp_path)
    verified = json.loads(run("verify", tmp_path, "--json").output)
    assert verified["ok"] and verified["path"].endswith(f"step-3/{layout.STATE_FILE}")
    inspected = json.loads(run("inspect", tmp_path, "--step", "1", "--json").output)
    assert inspected["state"]["step"] == 1
    same = run("diff", tmp_path, tmp_path, "--step-a", "2", "--step-b", "2")
    assert same.exit_code == 0, same.output
    assert run("diff", tmp_path, tmp_path, "--step-a", "1").exit_code == 1
    missing = run("verify", tmp_path, "--step", "9")
    assert missing.exit_code == 2 and "no step 9 (steps: 1, 2, 3)" in missing.output
