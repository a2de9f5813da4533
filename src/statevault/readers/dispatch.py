"""open_checkpoint(): the one dispatch from whatever the caller holds to a :class:`Reader`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from statevault.errors import CheckpointNotFoundError, UnsupportedObjectError
from statevault.readers.base import Reader
from statevault.readers.files import SafetensorsInput, open_file
from statevault.readers.folders import open_folder
from statevault.readers.in_memory import MemoryInput
from statevault.readers.safetensors_file import Checkpoint

# what load_into, check and materialize accept
Source = str | os.PathLike[str] | Mapping[str, torch.Tensor] | Checkpoint | Reader


def open_reader(
    source: str | os.PathLike[str] | Checkpoint | Mapping[str, Any],
    *,
    tree: bool = True,
    weights: bool = False,
) -> Reader:
    """:func:`open_checkpoint` with one more switch for the library's own callers.

    ``tree=False`` drops a statevault file's nested-state tree on open (for reads by name).
    """
    if isinstance(source, Checkpoint):
        return SafetensorsInput(source)  # the caller's: closing the reader leaves it open
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not os.path.lexists(path):  # a symlink loop exists: opening it says so
            raise CheckpointNotFoundError(f"{path}: no such checkpoint file or directory")
        if path.is_dir():
            return open_folder(path, tree=tree, weights=weights)
        return open_file(path, tree=tree)
    if isinstance(source, Mapping):
        return MemoryInput(source)
    raise UnsupportedObjectError(
        "a checkpoint source must be a path (file or directory), a Checkpoint or a state "
        f"dict, got {type(source)!r}"
    )


def open_checkpoint(
    source: str | os.PathLike[str] | Checkpoint | Mapping[str, Any], *, weights: bool = False
) -> Reader:
    """Open any checkpoint for reading; close the returned :class:`Reader` when done.

    ``source`` is a statevault or safetensors file, a torch ``.pt``/``.pth``/``.bin`` file
    (zip or legacy; read only through ``torch.load(weights_only=True)``), a shard index
    (``model.safetensors.index.json``, ``pytorch_model.bin.index.json``), a folder (a
    sharded directory, ``save_pretrained``, a Trainer ``checkpoint-N/``, accelerate
    ``save_state``), a :class:`Checkpoint` or an in-memory flat state dict. ``weights=True``
    opens only a folder's model weights. ``reader.contents`` lists the files read.

    Example::

        with statevault.open_checkpoint("out/checkpoint-500") as ckpt:
            print([(e.file, e.key, e.status) for e in ckpt.contents])
            state = ckpt.load()  # {"model": ..., "optimizer": ..., "rng_state": ...}
    """
    return open_reader(source, weights=weights)


def open_source(source: Source) -> tuple[Reader, bool]:
    """The reader ``load_into`` fills from, and whether it is ours to close.

    A folder gives its model weights; a statevault file is opened without its tree (it
    reads tensors by name, and the tree of 20,000 tensors is megabytes of text).
    """
    if isinstance(source, Reader):
        return source.weights(), False
    if isinstance(source, (str, os.PathLike, Checkpoint, Mapping)):
        return open_reader(source, tree=False, weights=True), True
    raise UnsupportedObjectError(
        "load_into source must be a path, a Checkpoint, an opened checkpoint "
        f"(statevault.open_checkpoint) or a state dict, got {type(source)!r}"
    )
