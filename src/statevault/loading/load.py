"""load(): read a checkpoint back into exactly the structure that was saved.

May import: ``readers``, ``engine``. Imported by the public package.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from statevault.engine.fsspec_storage import StorageOptions
from statevault.readers.base import Checkpoint


def load(
    source: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    verify: bool = True,
    storage_options: StorageOptions | None = None,
    mmap: bool = False,
) -> Any:
    """Load what :func:`save` wrote, or any checkpoint :class:`Checkpoint` opens.

    Tuples come back as tuples, int keys as ints, tied tensors as one shared tensor, numpy
    values as numpy. A plain safetensors file, sharded checkpoint or ``save_pretrained``
    folder gives a flat name -> tensor dict; a training folder (Trainer ``checkpoint-N/``,
    accelerate ``save_state``) gives ``{key: state}`` (see docs/opening.md).
    ``verify`` checks every tensor's checksum while reading (a few percent of load time).
    A URL (``s3://bucket/ckpt.safetensors``, or a prefix holding a sharded or DCP
    checkpoint) is read with ranged requests in parallel, ``storage_options`` passed to
    fsspec.
    ``mmap=True`` (safetensors files, on the CPU) returns views of a private, copy-on-write
    mapping of the file instead of copies: processes loading one file share its pages, and
    writes stay in the process that makes them (docs/loading.md, "Memory-mapped loads").

    Example::

        state = statevault.load("ckpt.safetensors")
        optimizer.load_state_dict(state["optim"])
    """
    with Checkpoint(source, storage_options=storage_options) as checkpoint:
        return checkpoint.load(device=device, verify=verify, mmap=mmap)
