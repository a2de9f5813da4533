"""The demo runs the tutorial flow end to end and fails loudly when state does not round-trip."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

import statevault
from statevault.cli import main
from statevault.cli.demo import run_demo


def test_demo_command_succeeds_and_writes_files(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["demo", "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "parameters identical to the uninterrupted run: yes" in result.output
    assert "predictions of the fresh model identical: yes" in result.output
    assert "build_model: predictions of the built model identical: yes" in result.output
    assert (tmp_path / "model.safetensors").is_file()
    restored = statevault.load(tmp_path / "checkpoint.safetensors")
    assert restored["epoch"] == 5
    assert set(restored["optimizer"]) == {"state", "param_groups"}


def test_demo_reports_failure_when_loading_is_broken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A load_into that silently does nothing must make the demo notice and exit non-zero.
    def broken_load_into(module: object, source: object) -> None:
        return None

    monkeypatch.setattr(statevault, "load_into", broken_load_into)
    lines: list[str] = []
    assert run_demo(tmp_path, lines.append) is False
    assert any(line.endswith("NO") for line in lines)
    result = CliRunner().invoke(main, ["demo", "--dir", str(tmp_path / "again")])
    assert result.exit_code == 1
    assert "did not match" in result.output
