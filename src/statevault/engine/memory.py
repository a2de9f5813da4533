"""Byte views of tensor memory and buffer arithmetic for vectored I/O.

The engine reads and writes tensors in place: these helpers turn a contiguous CPU tensor
into a writable ``memoryview`` without building a Python object per size, and follow a
list of buffers through short ``readv``/``writev`` transfers. Fresh memory is not advised
to use huge pages (``MADV_HUGEPAGE``): on the virtual machines measured, the first huge-page
fill in a process cost 4-6x a plain one (docs/performance.md). May import: nothing of
statevault. Imported by the engine's readers and writers.
"""

from __future__ import annotations

import ctypes
import sys
from typing import TypeAlias

import torch

ByteBuffer: TypeAlias = "memoryview | ctypes.Array[ctypes.c_ubyte]"  # len() is its size in bytes

# One byte view of the whole address space, built once: a view of a tensor's memory is a
# slice of it (~0.2 us, and the slice is the only new object). Building a ctypes array type
# per size (``(c_ubyte * n).from_address``) cost ~0.6-1.2 us and left two classes per
# distinct size for the cyclic collector after every save and load (torch's tests assert
# ``gc.collect() == 0`` after a load). Nothing is read or written through it but tensors'
# own memory, sliced by their own address and size.
_ADDRESS_SPACE = memoryview((ctypes.c_ubyte * (sys.maxsize // 2)).from_address(0)).cast("B")


def tensor_memory(tensor: torch.Tensor) -> memoryview:
    """A writable byte view of a contiguous CPU tensor's memory (keep the tensor alive)."""
    nbytes = tensor.numel() * tensor.element_size()
    if nbytes == 0:
        return memoryview(bytearray())
    address = tensor.data_ptr()
    return _ADDRESS_SPACE[address : address + nbytes]


def remaining_after(buffers: list[ByteBuffer], done: int) -> list[ByteBuffer]:
    """What remains of ``buffers`` after the first ``done`` bytes were transferred.

    One pass (slicing the list once per buffer would be quadratic in a 1024-buffer run).
    """
    finished = 0
    while finished < len(buffers) and done >= len(buffers[finished]):
        done -= len(buffers[finished])
        finished += 1
    rest = buffers[finished:]
    if rest and done:
        rest[0] = memoryview(rest[0])[done:]
    return rest
