"""Where a managed run's steps live: the interface the manager uses, and local disk behind it.

A :class:`StepStore` is everything the manager does to storage: lock the run, find the
committed steps and read their manifests, write and commit a step, mark one preempted,
delete one, remove what killed saves left, record retention, and verify or load a step's
state. :class:`DiskStore` is a local directory (``layout.py``: a hidden folder renamed into
place, a ``flock``); ``object_store.ObjectStore`` is an fsspec URL (a commit marker created
last with a conditional create, a lease object). :func:`store_for` picks one from the name.

Steps are named by a *location* string (a folder path, or a URL prefix) that only the store
interprets. Imported by ``statevault.manager.manager`` and ``catalog``.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from statevault.engine.fsspec_storage import StorageOptions, is_url
from statevault.errors import CheckpointWriteError, InvalidArgumentError
from statevault.loading.load import load
from statevault.manager import layout
from statevault.manager.lock import DirectoryLock
from statevault.saving.save import save
from statevault.tools.verification import VerifyReport, verify


class StepStore(ABC):
    """The storage side of a CheckpointManager; see the module docstring."""

    where: str  # the run, as messages name it

    @abstractmethod
    def open(self, *, create: bool) -> None:
        """Check the run is there (creating it when asked and needed)."""

    @abstractmethod
    def acquire(self, *, break_lock: bool) -> None:
        """Become the one writer of the run, or raise ``ManagerLockedError`` naming the holder."""

    @abstractmethod
    def release(self) -> None:
        """Stop being the writer (safe to call twice, or without :meth:`acquire`)."""

    @abstractmethod
    def remove_leftovers(self) -> list[str]:
        """Remove what killed saves and deletions left (only while holding the lock)."""

    @abstractmethod
    def committed_steps(self) -> dict[int, str]:
        """The location of every committed step, by step number."""

    @abstractmethod
    def read_manifest(self, location: str, step: int) -> dict[str, Any]:
        """A committed step's manifest; ``ValueError`` saying what is wrong when damaged."""

    @abstractmethod
    def state_file(self, location: str, manifest: Mapping[str, Any]) -> str | Path:
        """The name of a step's state file, as the file tools take it."""

    @abstractmethod
    def write_step(
        self, step: int, state: Any, metadata: dict[str, str], manifest: dict[str, Any]
    ) -> str:
        """Write and commit ``step``; ``manifest`` gets ``nbytes`` (and what the store adds).
        Returns the step's location. On failure nothing is visible and no step is deleted."""

    @abstractmethod
    def mark_preempted(self, location: str) -> None:
        """Record that a committed step was saved (or finished) on a preemption signal."""

    @abstractmethod
    def remove_step(self, step: int) -> None:
        """Delete a committed step, so that a killed deletion never leaves half a step."""

    @abstractmethod
    def write_retention(self, record: dict[str, Any]) -> None:
        """Replace the record of the last retention pass (what ``statevault ls`` shows)."""

    @abstractmethod
    def read_retention(self) -> dict[str, Any]:
        """The last retention record, or {} when there is none or it is unreadable."""

    @abstractmethod
    def verify(self, state_file: str | Path) -> VerifyReport:
        """``statevault.verify`` of a step's state file."""

    @abstractmethod
    def load(self, state_file: str | Path, device: str | torch.device) -> Any:
        """``statevault.load`` of a step's state file (checksums verified)."""


class DiskStore(StepStore):
    """A local directory: ``layout.py`` does every file-system operation, ``lock.py`` locks."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.where = str(directory)
        self._lock = DirectoryLock(directory)

    def open(self, *, create: bool) -> None:
        layout.open_directory(self.directory, create=create)

    def acquire(self, *, break_lock: bool) -> None:
        self._lock.acquire()  # a flock is never stale: the kernel drops it with its process

    def release(self) -> None:
        self._lock.release()

    def remove_leftovers(self) -> list[str]:
        return layout.remove_leftovers(self.directory)

    def committed_steps(self) -> dict[int, str]:
        return {step: str(path) for step, path in layout.committed_steps(self.directory).items()}

    def read_manifest(self, location: str, step: int) -> dict[str, Any]:
        return layout.read_manifest(Path(location), step)

    def state_file(self, location: str, manifest: Mapping[str, Any]) -> Path:
        return Path(location) / layout.STATE_FILE

    def write_step(
        self, step: int, state: Any, metadata: dict[str, str], manifest: dict[str, Any]
    ) -> str:
        preempted = manifest.pop("preempted", False)  # a file of its own on disk
        temporary = layout.new_temporary(self.directory, step)
        try:
            try:
                save(state, temporary / layout.STATE_FILE, metadata=metadata)
            except CheckpointWriteError as exc:  # it names the hidden folder: name the step
                if exc.errno is None:
                    raise
                cause = OSError(exc.errno, os.strerror(exc.errno))
                raise layout.os_error(cause, f"writing step {step}", self.directory) from exc
            manifest["nbytes"] = (temporary / layout.STATE_FILE).stat().st_size
            layout.write_manifest(temporary, manifest)
            if preempted:
                layout.mark_preempted(temporary)
            folder = layout.commit(temporary, self.directory, step)
            manifest["preempted"] = preempted
            return str(folder)
        except BaseException:
            layout.discard(temporary)
            raise

    def mark_preempted(self, location: str) -> None:
        layout.mark_preempted(Path(location))

    def remove_step(self, step: int) -> None:
        layout.remove_step(self.directory, step)

    def write_retention(self, record: dict[str, Any]) -> None:
        layout.write_retention(self.directory, record)

    def read_retention(self) -> dict[str, Any]:
        return layout.read_retention(self.directory)

    def verify(self, state_file: str | Path) -> VerifyReport:
        return verify(state_file)

    def load(self, state_file: str | Path, device: str | torch.device) -> Any:
        return load(state_file, device=device)


def store_for(
    directory: str | os.PathLike[str], storage_options: StorageOptions | None
) -> StepStore:
    """An object store for a URL (``s3://bucket/run``, ``memory://run``), disk otherwise."""
    if is_url(directory):
        from statevault.manager.object_store import ObjectStore  # fsspec only when used

        return ObjectStore(os.fspath(directory), storage_options)
    if storage_options:
        raise InvalidArgumentError(
            f"{os.fspath(directory)}: storage_options apply to URLs (s3://bucket/run), not "
            "local directories; leave it out for a local directory"
        )
    return DiskStore(Path(directory))
