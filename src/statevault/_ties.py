"""Recognising tied tensors: two names that are the very same data."""

from __future__ import annotations

from typing import Any

import torch


def memory_identity(tensor: torch.Tensor) -> tuple[Any, ...] | None:
    """A key equal for two tensors exactly when they view the same bytes in the same way.

    None for empty tensors, which have nothing to share (and often a null data pointer).
    Meta tensors have no memory to compare, so for them tied means the same object.
    """
    if tensor.numel() == 0:
        return None
    if tensor.device.type == "meta":
        return ("meta", id(tensor))
    return (
        tensor.device,
        tensor.data_ptr(),  # storage address + offset, without building a storage object
        tuple(tensor.shape),
        tensor.stride(),
        tensor.dtype,
        tensor.is_conj(),
        tensor.is_neg(),
    )
