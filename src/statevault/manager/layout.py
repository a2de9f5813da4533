"""A managed checkpoint directory on disk: step folder names, atomic commit, deletion, leftovers.

Every file-system operation of the checkpoint manager is here (the state file itself is
written by ``statevault.save``), so that the manager can move onto the engine's storage
interface (object storage, where a commit file is written last instead of a rename) by
replacing this one module. The directory looks like::

    DIR/
      .statevault-manager.lock         held (flock) by the managing process: lock.py
      retention.json                   the last retention pass: kept steps and why
      step-7/   state.safetensors  step.json  [preempted]
      step-12/  ...
      .step-13.<pid>.<random>.tmp/     a save in progress (or a leftover of a killed one)
      .step-2.<random>.deleting/       a deletion in progress (or a leftover)

Step folders are ``step-<N>`` with N in plain decimal (no zero padding, so any step number
fits; listings sort numerically). A step becomes visible only when complete: it is written
into a hidden temporary folder, every file and the folder are fsynced, the folder is renamed
to ``step-<N>`` and the parent is fsynced. Deletion is the reverse: rename to a hidden name
first (atomic), then remove, so a killed deletion never leaves a half-deleted ``step-<N>``.
Hidden leftovers are removed when a manager starts (it holds the lock, so none is live).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Any

from statevault.errors import (
    CheckpointNotFoundError,
    CheckpointPermissionError,
    CheckpointWriteError,
)

STATE_FILE = "state.safetensors"
MANIFEST_FILE = "step.json"
PREEMPTED_FILE = "preempted"
RETENTION_FILE = "retention.json"
LOCK_FILE = ".statevault-manager.lock"
MANIFEST_FORMAT = "statevault.manager/1"
_STEP_NAME = re.compile(r"step-(0|[1-9][0-9]*)\Z")
_LEFTOVER = re.compile(r"\.step-[0-9]+\.[0-9A-Za-z.]+\.(tmp|deleting)\Z")
_RETENTION_TEMP = f".{RETENTION_FILE}.tmp"
logger = logging.getLogger("statevault.manager")


def step_name(step: int) -> str:
    return f"step-{step}"


def step_dir(directory: Path, step: int) -> Path:
    return directory / step_name(step)


def os_error(exc: OSError, what: str, path: Path) -> Exception:
    """An OS error as the statevault error a caller catches, naming ``path`` and what failed."""
    reason = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC:
        return CheckpointWriteError(
            f"{path}: {what} failed: no space left on the device; the step was not committed "
            "and no step was deleted. Free space, or keep fewer steps (max_to_keep)",
            exc.errno,
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return CheckpointPermissionError(
            f"{path}: {what} failed: {reason}; give this process write access to the "
            "directory or choose another one",
            exc.errno,
        )
    if exc.errno == errno.ENOENT:
        return CheckpointNotFoundError(
            f"{path}: {what} failed: the directory vanished ({reason}); was it deleted or "
            "unmounted while the run was saving?"
        )
    return CheckpointWriteError(f"{path}: {what} failed: {reason}", exc.errno)


def open_directory(directory: Path, *, create: bool) -> None:
    """Make sure ``directory`` exists (creating it when asked) and is a directory."""
    try:
        if create:
            directory.mkdir(parents=True, exist_ok=True)
        if not directory.is_dir():
            if directory.exists():
                raise CheckpointWriteError(
                    f"{directory}: is a file, not a directory; a CheckpointManager needs a "
                    "directory of its own"
                )
            raise CheckpointNotFoundError(f"{directory}: no such checkpoint directory")
    except OSError as exc:
        if exc.errno is None:
            raise
        raise os_error(exc, "opening the checkpoint directory", directory) from exc


def committed_steps(directory: Path) -> dict[int, Path]:
    """Every ``step-<N>`` folder, by step number (committed: only complete ones have the name)."""
    try:
        names = os.listdir(directory)
    except OSError as exc:
        raise os_error(exc, "listing the checkpoint directory", directory) from exc
    found = {}
    for name in names:
        match = _STEP_NAME.match(name)
        if match and (directory / name).is_dir():
            found[int(match.group(1))] = directory / name
    return found


def remove_leftovers(directory: Path) -> list[str]:
    """Remove the hidden folders of killed saves and deletions; returns their names."""
    removed = []
    for name in sorted(os.listdir(directory)):
        if _LEFTOVER.match(name) or name == _RETENTION_TEMP:
            path = directory / name
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(name)
    if removed:
        logger.info("%s: removed leftovers of interrupted saves: %s", directory, ", ".join(removed))
    return removed


def new_temporary(directory: Path, step: int) -> Path:
    """A new hidden folder to write step ``step`` into before it is committed."""
    path = directory / f".step-{step}.{os.getpid()}.{secrets.token_hex(6)}.tmp"
    try:
        path.mkdir()
    except OSError as exc:
        raise os_error(exc, f"creating a folder for step {step}", directory) from exc
    return path


def write_file(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file and fsync it (the fault-injection point of the tests)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    data = json.dumps({"format": MANIFEST_FORMAT, **manifest}, allow_nan=False, indent=1)
    try:
        write_file(folder / MANIFEST_FILE, data.encode())
    except OSError as exc:
        raise os_error(exc, f"writing {MANIFEST_FILE}", folder.parent) from exc


def mark_preempted(folder: Path) -> None:
    """Record that a save was triggered (or finished) by a preemption signal."""
    marker = folder / PREEMPTED_FILE
    try:
        if not marker.exists():
            write_file(marker, b"saved on a preemption signal\n")
            fsync_directory(folder)
    except OSError as exc:
        raise os_error(exc, "marking a step as saved on preemption", folder.parent) from exc


def read_manifest(folder: Path, step: int) -> dict[str, Any]:
    """The manifest of a committed step; ValueError saying what is wrong when damaged."""
    try:
        text = (folder / MANIFEST_FILE).read_text(encoding="utf-8")
        data = json.loads(text)
    except FileNotFoundError:
        raise ValueError(f"{MANIFEST_FILE} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{MANIFEST_FILE} is unreadable ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{MANIFEST_FILE} is not a statevault manager manifest")
    if data.get("step") != step:
        raise ValueError(f"{MANIFEST_FILE} says step {data.get('step')!r}, the folder {step}")
    if not (folder / STATE_FILE).is_file():
        raise ValueError(f"{STATE_FILE} is missing")
    data["preempted"] = (folder / PREEMPTED_FILE).exists()
    return data


def folder_bytes(folder: Path) -> int:
    return sum(entry.stat().st_size for entry in folder.iterdir() if entry.is_file())


def commit(temporary: Path, directory: Path, step: int) -> Path:
    """Make a completely written step visible under its name, durably; returns its folder."""
    final = step_dir(directory, step)
    try:  # its files are fsynced already (statevault.save and write_file)
        fsync_directory(temporary)
        if final.exists():  # rename() would replace an empty folder; never replace a step
            raise FileExistsError(errno.EEXIST, "a step of that number exists", str(final))
        os.rename(temporary, final)
        fsync_directory(directory)
    except OSError as exc:
        raise os_error(exc, f"committing step {step}", directory) from exc
    return final


def discard(temporary: Path) -> None:
    """Remove an uncommitted step folder (best effort: a leftover is removed on next start)."""
    shutil.rmtree(temporary, ignore_errors=True)


def remove_step(directory: Path, step: int) -> None:
    """Delete a committed step: hidden by an atomic rename first, then removed."""
    hidden = directory / f".step-{step}.{secrets.token_hex(6)}.deleting"
    try:
        os.rename(step_dir(directory, step), hidden)
        fsync_directory(directory)
    except OSError as exc:
        raise os_error(exc, f"deleting step {step}", directory) from exc
    shutil.rmtree(hidden, ignore_errors=True)


def write_retention(directory: Path, record: dict[str, Any]) -> None:
    """Replace ``retention.json`` atomically (what ``statevault ls`` shows as kept and why)."""
    temporary = directory / _RETENTION_TEMP
    try:
        temporary.unlink(missing_ok=True)
        write_file(temporary, json.dumps(record, indent=1, allow_nan=False).encode())
        os.replace(temporary, directory / RETENTION_FILE)
    except OSError as exc:
        raise os_error(exc, f"writing {RETENTION_FILE}", directory) from exc


def read_retention(directory: Path) -> dict[str, Any]:
    """The last recorded retention pass, or {} when there is none or it is unreadable."""
    try:
        data = json.loads((directory / RETENTION_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}
