"""From whatever the caller holds to the :class:`Checkpoint` implementation that reads it.

``Checkpoint(source)`` calls :func:`open_any`; ``load_into`` and friends call
:func:`open_source`, which also takes a checkpoint the caller already opened. A URL
(``s3://bucket/key``, any fsspec protocol, configured by ``storage_options``) opens through
:func:`open_url`: an object is sniffed with one small read (a statevault/safetensors file
or a shard index); a prefix is listed once and opens as the statevault DCP directory
(``statevault-dcp.json``) or sharded checkpoint (``model.safetensors.index.json``) it
holds. ``storage_options`` with a local path is refused, as ``save`` refuses it. The
implementations a plain file does not need (directories, URLs, distributed checkpoints, state
dicts in memory) are imported where they are chosen: a one-shot load of one file pays only for
what it uses (~15 ms less at first use). May be imported by ``readers.base`` (lazily: this
module imports every implementation) and the layers above.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from statevault.engine.fsspec_storage import StorageOptions, is_url, storage_for
from statevault.engine.storage import Storage
from statevault.errors import (
    CheckpointNotFoundError,
    InvalidArgumentError,
    UnsupportedObjectError,
)
from statevault.readers.base import Checkpoint
from statevault.readers.safetensors_file import SafetensorsCheckpoint
from statevault.readers.sniff import INDEX_NAME, FileKind, checkpoint_file_kind, not_a_checkpoint
from statevault.readers.tensor_files import open_tensor_file

SINGLE_NAME = "model.safetensors"
# what load_into, check and materialize accept
Source = str | os.PathLike[str] | Mapping[str, torch.Tensor] | Checkpoint


def open_any(
    source: str | os.PathLike[str] | Mapping[str, Any],
    *,
    weights: bool = False,
    storage_options: StorageOptions | None = None,
) -> Checkpoint:
    """Open a path (file or folder) or URL, or wrap an in-memory state dict.

    ``weights=True`` opens only a folder's model weights (see ``readers.folders``).
    """
    if is_url(source):
        assert isinstance(source, str)  # is_url says so; mypy cannot see it
        return open_url(source, storage_options)
    if isinstance(source, (str, os.PathLike)):
        storage_for(source, storage_options)  # refuses storage_options for a path, as save
        path = Path(source)
        if not os.path.lexists(path):  # a symlink loop exists: opening it says so
            raise CheckpointNotFoundError(f"{path}: no such checkpoint file or directory")
        if path.is_dir():
            return _open_directory(path, weights=weights)
        kind = checkpoint_file_kind(path)
        if kind is FileKind.INDEX:
            from statevault.readers.sharded import ShardedCheckpoint

            return ShardedCheckpoint.from_index(path)
        return open_tensor_file(path, kind=kind)
    if isinstance(source, Checkpoint):
        raise UnsupportedObjectError(
            f"{source.label}: is already an open Checkpoint; use it as it is (load_into, check "
            "and materialize take it too) instead of opening it again"
        )
    if isinstance(source, Mapping):
        if storage_options:
            raise InvalidArgumentError(
                "storage_options apply to URLs (s3://...), not to a state dict in memory; "
                "leave it out"
            )
        from statevault.readers.in_memory import MemoryCheckpoint

        return MemoryCheckpoint.from_state(source)
    raise UnsupportedObjectError(
        "a checkpoint source must be a path (file or directory) or a state dict, got "
        f"{type(source)!r}"
    )


def _open_directory(path: Path, *, weights: bool) -> Checkpoint:
    """A local directory: a distributed checkpoint (ours or DCP's own), else a folder."""
    from statevault.readers.dcp_checkpoint import DcpCheckpoint, is_dcp_directory
    from statevault.readers.distcp_checkpoint import DistcpCheckpoint, is_distcp_directory
    from statevault.readers.folders import open_folder

    if is_dcp_directory(path):
        return DcpCheckpoint.from_directory(path)
    if is_distcp_directory(path):
        return DistcpCheckpoint.from_directory(path)
    return open_folder(path, weights=weights)


def open_source(
    source: Source, storage_options: StorageOptions | None = None
) -> tuple[Checkpoint, bool]:
    """The checkpoint ``load_into`` fills from (a folder's model weights), and whether it is
    ours to close (not when the caller opened it)."""
    if isinstance(source, Checkpoint):
        if storage_options:
            raise InvalidArgumentError(
                f"{source.label}: storage_options apply when opening a URL; this checkpoint "
                "is already open, so leave storage_options out"
            )
        return source.weights(), False
    if isinstance(source, (str, os.PathLike, Mapping)):
        return open_any(source, weights=True, storage_options=storage_options), True
    raise UnsupportedObjectError(
        "load_into source must be a path, an opened statevault.Checkpoint or a state dict, "
        f"got {type(source)!r}"
    )


def open_url(url: str, storage_options: StorageOptions | None) -> Checkpoint:
    """The checkpoint at ``url``: an object (a file or an index), else a prefix holding one."""
    from statevault.readers.remote_objects import sniff_object
    from statevault.readers.sharded import ShardedCheckpoint

    storage = storage_for(url, storage_options)
    url = url.rstrip("/")
    try:
        kind, stored, head = sniff_object(storage, url)  # one request: kind and header
    except CheckpointNotFoundError as missing:
        return _open_prefix(storage, url, missing)
    try:
        if kind is FileKind.INDEX:
            stored.close()
            return ShardedCheckpoint.from_index(url, storage=storage)
        if kind is FileKind.UNKNOWN and not url.endswith(".safetensors"):
            raise not_a_checkpoint(url, "neither safetensors nor torch")
        # (a damaged safetensors file: its parser says how)
        return SafetensorsCheckpoint.from_file(url, storage=storage, opened=(stored, head))
    except BaseException:
        stored.close()
        raise


def _open_prefix(storage: Storage, url: str, missing: CheckpointNotFoundError) -> Checkpoint:
    """A prefix's checkpoint, chosen from one listing; ``missing`` when there is none."""
    from statevault.fileformat.dcp_index import INDEX_NAME as DCP_INDEX_NAME
    from statevault.readers.dcp_checkpoint import DcpCheckpoint
    from statevault.readers.remote_objects import joined
    from statevault.readers.sharded import ShardedCheckpoint

    names = storage.list_names(url)
    if not names:
        raise missing  # no such object, and nothing under it as a prefix
    if DCP_INDEX_NAME in names:
        return DcpCheckpoint.from_directory(url, storage=storage)
    if INDEX_NAME in names:
        return ShardedCheckpoint.from_index(joined(url, INDEX_NAME), label=url, storage=storage)
    if SINGLE_NAME in names:  # save_pretrained's one file
        return SafetensorsCheckpoint.from_file(joined(url, SINGLE_NAME), storage=storage)
    shown = ", ".join(names[:10]) + (f", ... and {len(names) - 10} more" * (len(names) > 10))
    raise CheckpointNotFoundError(
        f"{url}: holds no checkpoint statevault reads from object storage (found {shown}). "
        f"A sharded checkpoint is committed by its {INDEX_NAME} and a statevault DCP "
        f"checkpoint by its {DCP_INDEX_NAME}, both written last: without one the save did "
        "not finish. Give the URL of a checkpoint file, or of a prefix holding one of those"
    )
