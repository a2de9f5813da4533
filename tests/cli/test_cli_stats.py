"""``statevault stats``: the table, --json, and the exit code a CI job can gate on."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from click.testing import CliRunner, Result

import statevault
from helpers.samples import training_state, write_sharded
from statevault.cli import main


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def test_a_healthy_checkpoint_is_exit_0_with_a_row_per_tensor(tmp_path: Path) -> None:
    path = tmp_path / "ok.safetensors"
    statevault.save({"enc.w": torch.arange(6.0).reshape(2, 3), "enc.b": torch.zeros(3)}, path)
    result = run("stats", path)
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if line.startswith("│")]
    assert [row.split("│")[1].strip() for row in rows] == ["enc.b", "enc.w"]
    assert "2.5" in rows[1] and "[2, 3]" in rows[1]  # the mean of 0..5
    assert "all_zeros" in rows[0]
    assert "OK with warnings: 1 of 2" in result.output
    assert "checksums verified" in result.output


def test_nan_in_optimizer_state_is_exit_1_and_named(tmp_path: Path) -> None:
    state = training_state()
    state["optim"]["state"][0]["exp_avg_sq"].view(-1)[3] = math.nan
    path = tmp_path / "train.safetensors"
    statevault.save(state, path)
    result = run("stats", path, "--flagged")
    assert result.exit_code == 1, result.output
    assert "DAMAGED: 1 of" in result.output
    assert "optim.state.0.exp_avg_sq: damaged: optimizer second moment" in result.output
    assert "model.block.0.weight" not in result.output  # --flagged lists only flagged rows


def test_json_is_one_strict_document_and_keeps_the_exit_code(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    torch.save({"w": torch.tensor([1.0, math.inf]), "b": torch.ones(2)}, path)
    result = run("stats", path, "--json")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["damaged"] is True and data["kind"] == "torch"
    w = next(t for t in data["tensors"] if t["name"] == "w")
    assert (w["posinf"], w["max"], w["flags"][0]["kind"]) == (1, 1.0, "inf")


def test_sharded_directory_and_missing_path(tmp_path: Path) -> None:
    write_sharded(tmp_path / "hf", {f"l.{i}.w": torch.full((4,), float(i + 1)) for i in range(3)})
    result = run("stats", tmp_path / "hf", "--json")
    assert result.exit_code == 0, result.output
    assert [t["mean"] for t in json.loads(result.stdout)["tensors"]] == [1.0, 2.0, 3.0]
    missing = run("stats", tmp_path / "nope.safetensors")
    assert missing.exit_code == 2 and "no such checkpoint" in missing.stderr
