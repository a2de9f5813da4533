"""Where ``convert`` reads and writes: local paths or URLs, checked before anything is read.

A destination must be new (or ``overwrite`` given) and must not be the source; for a
sharded output its index is checked too. At a URL "exists" is the object store's answer
and the size written is the object's; ``storage_options`` serve whichever side is a URL
(one dict for both, as ``diff`` takes it). May be imported by ``tools.conversion``.
"""

from __future__ import annotations

import os
from pathlib import Path

from statevault.engine.fsspec_storage import StorageOptions, storage_for
from statevault.errors import DestinationExistsError, InvalidArgumentError
from statevault.fileformat.shards import index_name
from statevault.readers.base import Checkpoint
from statevault.readers.remote_objects import joined, parent


def options_for(where: Path | str, storage_options: StorageOptions | None) -> StorageOptions | None:
    """``storage_options`` for a URL; None for a local path (they would be refused there)."""
    return storage_options if isinstance(where, str) else None


def index_of(destination: Path | str) -> Path | str:
    """Where a sharded save of ``destination`` puts its index."""
    if isinstance(destination, str):
        return joined(parent(destination), index_name(destination.rsplit("/", 1)[-1]))
    return destination.with_name(index_name(destination.name))


def _same_file(a: Path | str, b: Path) -> bool:
    try:
        return isinstance(a, Path) and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_destination(
    source: Path | str,
    destination: Path | str,
    *,
    overwrite: bool,
    storage_options: StorageOptions | None,
) -> None:
    """Refuse writing over the source, into a directory, or over a file not to be replaced."""
    if isinstance(destination, str):
        if destination.rstrip("/") == str(source).rstrip("/"):
            raise InvalidArgumentError(f"{destination}: destination must not be the source")
        storage = storage_for(destination, storage_options)
        exists = storage.exists(destination)
    else:
        if _same_file(source, destination) or destination.is_dir():
            raise InvalidArgumentError(
                f"{destination}: destination must be a new file, not the source or a directory"
            )
        exists = destination.exists() or destination.is_symlink()
    if exists and not overwrite:
        raise DestinationExistsError(
            f"{destination}: already exists; convert() replaces a file only when told to "
            "(overwrite=True), then atomically",
            str(destination),
        )


def written(
    destination: Path | str, storage_options: StorageOptions | None, *, sharded: bool
) -> tuple[str, int]:
    """(what was written, its size in bytes): the index and its shards' total when a sharded
    save wrote one (with one shard's worth it writes the one file instead)."""
    options = options_for(destination, storage_options)
    index = index_of(destination)
    if sharded:
        if isinstance(index, str):
            present = storage_for(index, options).exists(index)
        else:
            present = index.exists()
        if present:
            with Checkpoint(index, storage_options=options) as opened:
                return str(index), opened.file_size
    if isinstance(destination, str):
        with storage_for(destination, options).open(destination) as stored:
            return destination, stored.size
    return str(destination), destination.stat().st_size
