"""Where convert() writes: a new file, or Hugging Face shards in a directory; checked first.

Every refusal happens before the source is read: the destination is the source, an
existing file without ``overwrite``, a directory without ``max_shard_size``. A directory
destination gets ``model.safetensors`` (or its shards and index), the names
``from_pretrained`` looks for. May be imported by ``tools.conversion``.
"""

from __future__ import annotations

import os
from pathlib import Path

from statevault.errors import CheckpointNotFoundError, DestinationExistsError, InvalidArgumentError
from statevault.tools.arguments import checkpoint_path

HF_WEIGHTS = "model.safetensors"  # what from_pretrained looks for in a folder (or its index)


def same_file(a: Path, b: Path) -> bool:
    try:
        return b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_destination(source: Path, destination: Path, *, overwrite: bool) -> None:
    if same_file(source, destination) or destination.is_dir():
        raise InvalidArgumentError(
            f"{destination}: destination must be a new file, not the source or a directory"
        )
    if not overwrite and (destination.exists() or destination.is_symlink()):
        raise DestinationExistsError(
            f"{destination}: already exists; convert() replaces a file only when told to "
            "(overwrite=True), then atomically",
            str(destination),
        )


def names_a_folder(destination: str | os.PathLike[str]) -> bool:
    text = os.fspath(destination)
    return Path(text).is_dir() or text.endswith(("/", os.sep))


def destination_file(
    source: Path, destination: str | os.PathLike[str], max_shard_size: int | str | None
) -> Path:
    """The file (or shard base) to write: a folder destination gets HF's ``model.safetensors``.

    A folder is an existing directory or a path ending in a separator (created if missing).
    """
    path = checkpoint_path(destination, argument="destination")
    if not names_a_folder(destination):
        return path
    if max_shard_size is None:
        raise InvalidArgumentError(
            f"{path}: is a directory; convert writes one file there only as Hugging Face "
            "shards: give max_shard_size (--max-shard-size 5GB), or name a file such as "
            f"{path / HF_WEIGHTS}"
        )
    if same_file(source, path):
        raise InvalidArgumentError(f"{path}: is the source; write the shards to another directory")
    return path / HF_WEIGHTS


def make_folder(folder: Path) -> None:
    try:
        folder.mkdir()
    except FileNotFoundError:
        raise CheckpointNotFoundError(
            f"{folder.parent}: no such directory for the destination {folder}; create it first"
        ) from None
