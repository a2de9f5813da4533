"""Opening one file of tensors (safetensors or torch) with the reader its bytes call for.

A shard, a folder's state file and a path given to ``Checkpoint`` all open here. May be
imported by the reader modules.
"""

from __future__ import annotations

from pathlib import Path

from statevault.errors import CheckpointKindError
from statevault.readers.base import Checkpoint
from statevault.readers.listing import FolderListing
from statevault.readers.safetensors_file import SafetensorsCheckpoint
from statevault.readers.sniff import DESCRIPTIONS, FileKind, checkpoint_file_kind
from statevault.readers.torch_file import TorchCheckpoint


def open_tensor_file(
    path: Path, *, kind: FileKind | None = None, listing: FolderListing | None = None
) -> Checkpoint:
    """The checkpoint of one safetensors or torch file (``kind``: already sniffed).

    A shard index is refused: it names files, it holds no tensors.
    """
    kind = checkpoint_file_kind(path) if kind is None else kind
    if kind is FileKind.TORCH or kind is FileKind.TORCH_LEGACY:
        return TorchCheckpoint.from_file(
            path, legacy=kind is FileKind.TORCH_LEGACY, listing=listing
        )
    if kind is FileKind.INDEX:
        raise CheckpointKindError(
            f"{path}: is {DESCRIPTIONS[FileKind.INDEX]} where a file of tensors was expected "
            "(a shard cannot be an index); point the index's weight_map at the shard files"
        )
    return SafetensorsCheckpoint.from_file(path, listing=listing)
