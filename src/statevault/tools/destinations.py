"""Where convert() writes: a new file, or Hugging Face shards in a directory; checked first.

Every refusal happens before the source is read: the destination is the source, an
existing file without ``overwrite``, a directory without ``max_shard_size``. A directory
destination gets ``model.safetensors`` (or its shards and index), the names
``from_pretrained`` looks for. A destination may be a URL (``s3://...``, a prefix ending in
``/`` for shards): "exists" is then the object store's answer and the size written the
objects'; ``storage_options`` serve whichever side is a URL (one dict for both, as ``diff``
takes it). May be imported by ``tools.conversion``.
"""

from __future__ import annotations

import os
from pathlib import Path

from statevault.engine.fsspec_storage import StorageOptions, is_url, storage_for
from statevault.errors import CheckpointNotFoundError, DestinationExistsError, InvalidArgumentError
from statevault.fileformat.shards import index_name
from statevault.readers.base import Checkpoint
from statevault.readers.remote_objects import joined, parent
from statevault.tools.arguments import checkpoint_source

HF_WEIGHTS = "model.safetensors"  # what from_pretrained looks for in a folder (or its index)


def options_for(where: Path | str, storage_options: StorageOptions | None) -> StorageOptions | None:
    """``storage_options`` for a URL; None for a local path (they would be refused there)."""
    return storage_options if isinstance(where, str) else None


def index_of(destination: Path | str) -> Path | str:
    """Where a sharded save of ``destination`` puts its index."""
    if isinstance(destination, str):
        return joined(parent(destination), index_name(destination.rsplit("/", 1)[-1]))
    return destination.with_name(index_name(destination.name))


def same_file(a: Path | str, b: Path | str) -> bool:
    if isinstance(a, str) or isinstance(b, str):  # a URL: the same only if spelled the same
        return str(a).rstrip("/") == str(b).rstrip("/")
    try:
        return b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_destination(
    source: Path | str,
    destination: Path | str,
    *,
    overwrite: bool,
    storage_options: StorageOptions | None = None,
) -> None:
    if isinstance(destination, str):
        if same_file(source, destination):
            raise InvalidArgumentError(f"{destination}: destination must not be the source")
        exists = storage_for(destination, storage_options).exists(destination)
    else:
        if same_file(source, destination) or destination.is_dir():
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


def names_a_folder(destination: str | os.PathLike[str]) -> bool:
    text = os.fspath(destination)
    return text.endswith(("/", os.sep)) or (not is_url(text) and Path(text).is_dir())


def destination_file(
    source: Path | str, destination: str | os.PathLike[str], max_shard_size: int | str | None
) -> Path | str:
    """The file (or shard base) to write: a folder destination gets HF's ``model.safetensors``.

    A folder is an existing directory or a path ending in a separator (created if missing);
    at a URL, a prefix ending in ``/``.
    """
    path = checkpoint_source(destination, argument="destination")
    if not names_a_folder(destination):
        return path
    inside = joined(path, HF_WEIGHTS) if isinstance(path, str) else path / HF_WEIGHTS
    if max_shard_size is None:
        raise InvalidArgumentError(
            f"{path}: is a directory; convert writes one file there only as Hugging Face "
            "shards: give max_shard_size (--max-shard-size 5GB), or name a file such as "
            f"{inside}"
        )
    if same_file(source, path):
        raise InvalidArgumentError(f"{path}: is the source; write the shards to another directory")
    return inside


def make_folder(folder: Path) -> None:
    try:
        folder.mkdir()
    except FileNotFoundError:
        raise CheckpointNotFoundError(
            f"{folder.parent}: no such directory for the destination {folder}; create it first"
        ) from None


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
