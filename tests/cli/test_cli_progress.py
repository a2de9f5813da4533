"""Progress bars: the file's name, a known total from the first frame, one unit system,
and a bar for every phase (convert's write too)."""

from __future__ import annotations

import io
import os
import pty
import select
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console
from rich.progress import Progress

import statevault
from statevault.cli._output import _BinarySpeedColumn, progress_bar, progress_bars


class Counting:
    def __init__(self) -> None:
        self.total: int | None = None
        self.done = 0

    def start(self, total: int) -> None:
        self.total = total

    def advance(self, nbytes: int) -> None:
        self.done += nbytes


def _terminal() -> Console:
    return Console(file=io.StringIO(), force_terminal=True, width=120)


def test_a_bar_is_hidden_until_its_total_is_known_and_names_its_file() -> None:
    with progress_bar("verifying", "ckpt\x1b[2J.safetensors", console=_terminal()) as bar:
        assert bar is not None
        task = bar._progress.tasks[0]
        assert not task.visible  # no "0/? bytes" frame
        bar.start(3 << 30)
        task = bar._progress.tasks[0]
        assert task.visible and task.total == 3 << 30
        assert task.description == "verifying ckpt\\x1b[2J.safetensors"


def test_speed_uses_the_binary_units_of_the_byte_column() -> None:
    progress = Progress()
    task_id = progress.add_task("x", total=10 << 30)
    task = progress.tasks[task_id]
    task.finished_speed = float(3 << 30)
    assert str(_BinarySpeedColumn().render(task)) == "3.0 GiB/s"


def test_convert_reports_its_read_and_its_write(tmp_path: Path) -> None:
    src, dst = tmp_path / "src.pt", tmp_path / "dst.sv"
    torch.save({"a": torch.ones(1000), "b": torch.zeros(10, dtype=torch.float64)}, src)
    read, write = Counting(), Counting()
    statevault.convert(src, dst, progress=read, write_progress=write)
    assert read.total == read.done == 4080
    assert write.total == write.done == 4080  # the write phase is shown to its end


def test_save_reports_every_byte_written_large_and_small(tmp_path: Path) -> None:
    written = Counting()
    state = {"big": torch.ones(1 << 19), **{f"s{i}": torch.ones(3) for i in range(50)}}
    statevault.save(state, tmp_path / "x.sv", progress=written)
    assert written.total == written.done == (1 << 21) + 50 * 12


def test_quiet_when_not_a_terminal() -> None:
    with progress_bars(console=Console(file=io.StringIO())) as bars:
        assert bars is None


def _on_a_terminal(args: list[str]) -> tuple[str, str]:
    """Run the real CLI with stderr on a pseudo-terminal; (what the terminal got, stdout)."""
    master, slave = pty.openpty()
    src = Path(statevault.__file__).parents[1]
    env = {"PYTHONPATH": str(src), "PATH": "", "TERM": "xterm-256color", "COLUMNS": "120"}
    process = subprocess.Popen(
        [sys.executable, "-m", "statevault", *args], stdout=subprocess.PIPE, stderr=slave, env=env
    )
    os.close(slave)
    received = []
    try:
        while select.select([master], [], [], 120)[0]:
            try:
                data = os.read(master, 1 << 16)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            received.append(data)
        stdout, _ = process.communicate(timeout=120)
    finally:
        os.close(master)
        process.kill()
    return b"".join(received).decode("utf-8", "replace"), stdout.decode()


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_a_real_terminal_sees_the_file_name_and_the_total_in_every_frame(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.safetensors"
    statevault.save({f"w{i}": torch.ones(1 << 18) for i in range(8)}, path)  # 8 MiB
    terminal, stdout = _on_a_terminal(["verify", str(path)])
    assert "OK (checksums)" in stdout and "\x1b[" not in stdout
    frames = [frame for frame in terminal.split("\r") if "verifying" in frame]
    assert frames, terminal
    for frame in frames:
        assert "ckpt.safetensors" in frame and "/8.0 MiB" in frame and "?" not in frame
