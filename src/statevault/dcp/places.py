"""Names inside a checkpoint directory, for local paths and object-store URLs alike.

Joined with ``/``: a local path and an ``s3://bucket/prefix`` key both take it, and the
storage behind the name decides what it means. May be imported by anything in
``statevault.dcp``.
"""

from __future__ import annotations

import os
from pathlib import Path

from statevault.engine.fsspec_storage import StorageOptions, storage_for
from statevault.engine.storage import LocalStorage, Storage


def joined(directory: str, name: str) -> str:
    return f"{directory.rstrip('/')}/{name}"


def checkpoint_dir(path: str | os.PathLike[str]) -> str:
    return os.fspath(path)


def make_directory(storage: Storage, directory: str) -> None:
    """Create a local directory (object stores have none to create)."""
    if isinstance(storage, LocalStorage):
        Path(directory).mkdir(parents=True, exist_ok=True)


def chosen_storage(
    path: str, storage: Storage | None, storage_options: StorageOptions | None
) -> Storage:
    """``storage`` when given, else the one ``path`` names (a URL: fsspec; a path: disk)."""
    return storage_for(path, storage_options) if storage is None else storage
