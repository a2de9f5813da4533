"""From whatever the caller holds to the :class:`Checkpoint` implementation that reads it.

``Checkpoint(source)`` calls :func:`open_any`; ``load_into`` and friends call
:func:`open_source`, which also takes a checkpoint the caller already opened. May be imported
by ``readers.base`` (lazily: this module imports every implementation) and the layers above.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from statevault.errors import CheckpointNotFoundError, UnsupportedObjectError
from statevault.readers.base import Checkpoint
from statevault.readers.dcp_checkpoint import DcpCheckpoint, is_dcp_directory
from statevault.readers.distcp_checkpoint import DistcpCheckpoint, is_distcp_directory
from statevault.readers.folders import open_folder
from statevault.readers.in_memory import MemoryCheckpoint
from statevault.readers.sharded import ShardedCheckpoint
from statevault.readers.sniff import FileKind, checkpoint_file_kind
from statevault.readers.tensor_files import open_tensor_file

# what load_into, check and materialize accept
Source = str | os.PathLike[str] | Mapping[str, torch.Tensor] | Checkpoint


def open_any(
    source: str | os.PathLike[str] | Mapping[str, Any], *, weights: bool = False
) -> Checkpoint:
    """Open a path (file or folder) or wrap an in-memory state dict.

    ``weights=True`` opens only a folder's model weights (see ``readers.folders``).
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not os.path.lexists(path):  # a symlink loop exists: opening it says so
            raise CheckpointNotFoundError(f"{path}: no such checkpoint file or directory")
        if path.is_dir() and is_dcp_directory(path):
            return DcpCheckpoint.from_directory(path)
        if path.is_dir() and is_distcp_directory(path):
            return DistcpCheckpoint.from_directory(path)
        if path.is_dir():
            return open_folder(path, weights=weights)
        kind = checkpoint_file_kind(path)
        if kind is FileKind.INDEX:
            return ShardedCheckpoint.from_index(path)
        return open_tensor_file(path, kind=kind)
    if isinstance(source, Checkpoint):
        raise UnsupportedObjectError(
            f"{source.label}: is already an open Checkpoint; use it as it is (load_into, check "
            "and materialize take it too) instead of opening it again"
        )
    if isinstance(source, Mapping):
        return MemoryCheckpoint.from_state(source)
    raise UnsupportedObjectError(
        "a checkpoint source must be a path (file or directory) or a state dict, got "
        f"{type(source)!r}"
    )


def open_source(source: Source) -> tuple[Checkpoint, bool]:
    """The checkpoint ``load_into`` fills from (a folder's model weights), and whether it is
    ours to close (not when the caller opened it)."""
    if isinstance(source, Checkpoint):
        return source.weights(), False
    if isinstance(source, (str, os.PathLike, Mapping)):
        return open_any(source, weights=True), True
    raise UnsupportedObjectError(
        "load_into source must be a path, an opened statevault.Checkpoint or a state dict, "
        f"got {type(source)!r}"
    )
