"""Recognising tied tensors: two names that are the very same data.

May import: torch only. Imported by saving, loading and the readers.
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Iterable
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


def identity_groups(named: Iterable[tuple[str, torch.Tensor]]) -> list[list[str]]:
    """Names of tensors with the same ``memory_identity``, in order; groups of two or more.

    Tied tensors start at the same address, so the full identity (a tuple of seven
    attributes) is built only for addresses that repeat. In most state dicts none does, and
    a tensor costs one ``data_ptr()`` call: that matters for states of 20,000 tensors.
    """
    names: list[str] = []
    tensors: list[torch.Tensor] = []
    for name, tensor in named:  # two columns, not a tuple kept per tensor for the collector
        names.append(name)
        tensors.append(tensor)
    # empty tensors are never tied (and may have no data pointer to ask for)
    addresses = [tensor.data_ptr() if tensor.numel() else None for tensor in tensors]
    counts = Counter(addresses)
    repeated = {a for a, count in counts.items() if count > 1 and a is not None}
    if not repeated:
        return []
    groups: dict[tuple[Any, ...], list[str]] = {}
    for address, name, tensor in zip(addresses, names, tensors, strict=True):
        if address in repeated:
            identity = memory_identity(tensor)
            if identity is not None:
                groups.setdefault(identity, []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def find_ties(named: Iterable[tuple[str, torch.Tensor]]) -> dict[str, str]:
    """``{later name: first name}`` for tensors with the same ``memory_identity``."""
    return {name: names[0] for names in identity_groups(named) for name in names[1:]}


def start_addresses() -> array[int]:
    """An empty table for the start addresses of tensors, to give ``any_repeated``.

    Fill it with ``tensor.data_ptr()`` of the non-empty tensors only (as ``identity_groups``
    does: empty tensors are never tied). 8 bytes an address, where the lists and Counter of
    ``identity_groups`` held 2.8 MiB for 20,000 tensors (memray).
    """
    return array("Q")


def any_repeated(addresses: array[int]) -> bool:
    """True when some address occurs twice: only then can two of the tensors be tied.

    Sorted by torch, without a Python int per address. The unsigned addresses are sorted as
    signed 64-bit numbers: a different order, but equal ones are still neighbours.
    """
    if len(addresses) < 2:
        return False
    ordered = torch.frombuffer(addresses, dtype=torch.int64).sort().values
    return bool((ordered[1:] == ordered[:-1]).any())
