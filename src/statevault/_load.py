"""load(): read a checkpoint back into exactly the structure that was saved."""

from __future__ import annotations

import os
from typing import Any

import torch

from statevault._checkpoint import Checkpoint
from statevault._gcpause import gc_paused


@gc_paused
def load(
    path: str | os.PathLike[str], *, device: str | torch.device = "cpu", verify: bool = True
) -> Any:
    """Load what :func:`save` wrote (or any safetensors file, as a flat dict).

    Tuples come back as tuples, int keys as ints, tied tensors as one shared tensor.
    ``verify`` checks every tensor's checksum while reading (a few percent of load time).

    Example::

        state = statevault.load("ckpt.safetensors")
        optimizer.load_state_dict(state["optim"])
    """
    with Checkpoint(path) as checkpoint:
        return checkpoint.load(device=device, verify=verify)
