"""load(): read a checkpoint back into exactly the structure that was saved."""

from __future__ import annotations

import os
from typing import Any

import torch

from statevault.readers.dispatch import open_checkpoint


def load(
    path: str | os.PathLike[str], *, device: str | torch.device = "cpu", verify: bool = True
) -> Any:
    """Load what :func:`save` wrote, or any checkpoint :func:`open_checkpoint` takes.

    Tuples come back as tuples, int keys as ints, tied tensors as one shared tensor, numpy
    values as numpy. A plain safetensors file, sharded checkpoint or ``save_pretrained``
    folder gives a flat name -> tensor dict; a training folder (Trainer ``checkpoint-N/``,
    accelerate ``save_state``) gives ``{key: state}`` (see docs/opening.md).
    ``verify`` checks every tensor's checksum while reading (a few percent of load time).

    Example::

        state = statevault.load("ckpt.safetensors")
        optimizer.load_state_dict(state["optim"])
    """
    with open_checkpoint(path) as checkpoint:
        return checkpoint.load(device=device, verify=verify)
