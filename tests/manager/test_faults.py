"""Disk full, read-only and vanished directories: one clear error, no partial step, nothing
valid deleted."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from tests.helpers.training_states import assert_state_is, state_for

from statevault import (
    CheckpointManager,
    CheckpointNotFoundError,
    CheckpointPermissionError,
    CheckpointWriteError,
)
from statevault.manager import layout


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs: a real ENOSPC. Mounting needs root (CAP_SYS_ADMIN)."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip()}); see the fault test")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _left(directory: Path) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name.startswith(("step-", ".step-")))


@pytest.mark.parametrize("blocking", [True, False])
def test_disk_full_gives_one_clear_error_and_keeps_every_valid_step(
    small_tmpfs: Path, blocking: bool
) -> None:
    with CheckpointManager(small_tmpfs, max_to_keep=1) as manager:
        manager.save(1, state_for(1, numel=256 * 1024))  # 2 MiB
        big = {"w": torch.ones(3 * 1024 * 1024)}  # 12 MiB: cannot fit
        with pytest.raises(CheckpointWriteError) as caught:
            manager.save(2, big, blocking=blocking)
            manager.wait()
        error = caught.value
        assert error.errno == errno.ENOSPC
        assert str(error).startswith(f"{small_tmpfs}: writing step 2 failed: no space left")
        assert "no step was deleted" in str(error)
        assert _left(small_tmpfs) == ["step-1"]  # no partial step, the valid one kept
        assert_state_is(manager.restore().state, 1, numel=256 * 1024)
        manager.save(3, state_for(3, numel=8))  # the run goes on once it fits
        assert _left(small_tmpfs) == ["step-1", "step-3"] or _left(small_tmpfs) == ["step-3"]


def test_fault_in_the_manifest_write_leaves_no_partial_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same, with the fault injected at layout's write (where no tmpfs can be mounted)."""
    with CheckpointManager(tmp_path, max_to_keep=1) as manager:
        manager.save(1, state_for(1))
        write_file = layout.write_file

        def full_disk(path: Path, data: bytes) -> None:
            if path.name == layout.MANIFEST_FILE:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            write_file(path, data)

        monkeypatch.setattr(layout, "write_file", full_disk)
        with pytest.raises(CheckpointWriteError, match="no space left") as caught:
            manager.save(2, state_for(2), blocking=False)
            manager.wait()
        assert caught.value.errno == errno.ENOSPC
        assert _left(tmp_path) == ["step-1"]
        monkeypatch.undo()
        manager.save(3, state_for(3))
        assert _left(tmp_path) == ["step-3"]  # deleted only after a newer commit


def test_a_read_only_directory_gives_a_clear_error(small_tmpfs: Path) -> None:
    with CheckpointManager(small_tmpfs) as manager:
        manager.save(1, state_for(1, numel=8))
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    with pytest.raises(CheckpointPermissionError, match="lock file failed: Read-only") as caught:
        CheckpointManager(small_tmpfs)
    assert caught.value.errno == errno.EROFS
    with CheckpointManager(small_tmpfs, read_only=True) as reader:  # reading still works
        assert reader.restore().step == 1


def test_a_vanished_directory_gives_a_clear_error(tmp_path: Path) -> None:
    directory = tmp_path / "run"
    with CheckpointManager(directory) as manager:
        manager.save(1, state_for(1, numel=8))
        shutil.rmtree(directory)
        with pytest.raises(CheckpointNotFoundError, match="the directory vanished"):
            manager.save(2, state_for(2, numel=8))
