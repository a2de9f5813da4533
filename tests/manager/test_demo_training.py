"""The demo's resumable run: killed by SIGKILL mid-save, resumed, identical to an
uninterrupted run."""

from __future__ import annotations

from pathlib import Path

from statevault.cli.demo_training import KILL_AFTER, run_resumable_demo


def test_killed_run_resumes_bit_exactly(tmp_path: Path) -> None:
    lines: list[str] = []
    assert run_resumable_demo(tmp_path, lines.append), "\n".join(lines)
    assert f"async save of step {KILL_AFTER}: yes" in lines[0]
    assert any(line.endswith("bit for bit: yes") for line in lines)
