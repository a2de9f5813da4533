"""Recognising tied tensors: two names that are the very same data."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
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


def find_ties(named: Sequence[tuple[str, torch.Tensor]]) -> dict[str, str]:
    """``{later name: first name}`` for tensors with the same ``memory_identity``.

    Tied tensors start at the same address, so the full identity (a tuple of seven
    attributes) is built only for addresses that repeat. In most state dicts none does, and
    a tensor costs one ``data_ptr()`` call: that matters for states of 20,000 tensors.
    """
    addresses = [tensor.data_ptr() for _, tensor in named]
    if len(set(addresses)) == len(addresses):
        return {}
    repeated = {a for a, count in Counter(addresses).items() if count > 1}
    first_with: dict[tuple[Any, ...], str] = {}
    ties: dict[str, str] = {}
    for address, (name, tensor) in zip(addresses, named, strict=True):
        if address not in repeated:
            continue
        identity = memory_identity(tensor)
        if identity is None:
            continue
        if identity in first_with:
            ties[name] = first_with[identity]
        else:
            first_with[identity] = name
    return ties
