"""``Checkpoint.get_slice(name)``: a lazy tensor handle that reads only the rows asked for.

As ``safetensors.safe_open(...).get_slice(name)``: ``get_shape()``, ``get_dtype()`` and
indexing with basic slices (``[a:b]``, ``[:, c:d]``, steps of 1) and integers. A slice
of a tensor stored raw in a safetensors file (or shard) is read with ``preadv`` straight
into the result's memory, one contiguous run of the file per row of the result's outer
dimensions, all runs of a call gathered into as few system calls as the kernel allows.
From an object store (S3) each read is a request: runs that follow each other are one
request already, and past ``REMOTE_RUNS`` separate runs (a few columns of a tall matrix)
one request for the span covering them all costs less than a request per run.
A slice that covers the whole tensor is checked against the tensor's digest; a partial
one is not verified (the format records one digest per tensor). Tensors stored another
way (torch files, encoded dtypes, in-memory state) are read whole, then sliced.

May be imported by ``readers.base`` (``Checkpoint.get_slice``, at call time) and above.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from itertools import product
from typing import Any

import torch

from statevault.engine.memory import ByteBuffer, tensor_memory
from statevault.engine.storage import StoredObject
from statevault.engine.tuning import MAX_IOV
from statevault.errors import InvalidArgumentError, TruncatedFileError
from statevault.fileformat.dtypes import CODE_TO_DTYPE, dtype_name
from statevault.readers.base import Checkpoint
from statevault.readers.safetensors_file import SafetensorsCheckpoint
from statevault.readers.sharded import ShardedCheckpoint

Ranges = list[tuple[int, int]]  # (start, stop) per dimension
REMOTE_RUNS = 64  # separate runs read one request each from an object store, at most


def _raw_file(checkpoint: Checkpoint, name: str) -> tuple[StoredObject, int] | None:
    """(open file, absolute data offset) when ``name`` is stored raw in a safetensors file."""
    stored = checkpoint.aliases.get(name, name)
    if isinstance(checkpoint, ShardedCheckpoint):
        return _raw_file(checkpoint.owner(stored), stored)
    if not isinstance(checkpoint, SafetensorsCheckpoint):
        return None
    info = checkpoint.resolve(stored)
    if info.offset is None or info.code is None or CODE_TO_DTYPE.get(info.code) != info.dtype:
        return None  # encoded dtypes are not element-addressable as stored
    return checkpoint.reader.file, info.offset


def _ranges(key: Any, shape: tuple[int, ...], name: str) -> tuple[Ranges, list[int]]:
    """Each dimension's (start, stop) and the dimensions an integer index removes."""
    items = key if isinstance(key, tuple) else (key,)
    if len(items) > len(shape):
        raise InvalidArgumentError(
            f"tensor {name!r}: {len(items)} indices for a tensor of {len(shape)} dimension(s)"
        )
    ranges: Ranges = []
    dropped = []
    for dim, item in enumerate(items):
        size = shape[dim]
        if isinstance(item, slice):
            start, stop, step = item.indices(size)
            if step != 1:
                raise InvalidArgumentError(
                    f"tensor {name!r}: slice step {item.step} in dimension {dim}; get_slice reads "
                    "steps of 1 (index the result for other steps)"
                )
            ranges.append((start, max(start, stop)))
        elif isinstance(item, int) and not isinstance(item, bool):
            if not -size <= item < size:
                raise InvalidArgumentError(
                    f"tensor {name!r}: index {item} is out of range for dimension {dim} of size {size}"
                )
            ranges.append((item % size, item % size + 1))
            dropped.append(dim)
        else:
            raise InvalidArgumentError(
                f"tensor {name!r}: get_slice takes integers and slices with step 1, got {item!r}"
            )
    ranges += [(0, size) for size in shape[len(items) :]]
    return ranges, dropped


def _runs(ranges: Ranges, shape: tuple[int, ...]) -> tuple[Iterator[int], int]:
    """Element offsets of the contiguous runs a slice reads, in result order, and their length."""
    last = max((d for d, (a, b) in enumerate(ranges) if (a, b) != (0, shape[d])), default=-1)
    if last < 0:
        return iter([0]), math.prod(shape)
    inner = math.prod(shape[last + 1 :])
    strides = [math.prod(shape[d + 1 :]) for d in range(len(shape))]
    length = (ranges[last][1] - ranges[last][0]) * inner
    outer = [range(a, b) for a, b in ranges[:last]]
    first = ranges[last][0] * strides[last]
    offsets = (
        first + sum(i * s for i, s in zip(index, strides, strict=False))
        for index in product(*outer)
    )
    return offsets, length


class TensorSlice:
    """A stored tensor, read in parts on indexing (see the module docstring)."""

    def __init__(self, checkpoint: Checkpoint, name: str) -> None:
        self._checkpoint = checkpoint
        self._name = name
        self._shape, self._dtype = checkpoint.signature(name)

    def get_shape(self) -> list[int]:
        return list(self._shape)

    def get_dtype(self) -> str:
        """The dtype's safetensors code, as safetensors gives it (``"F32"``, ``"BF16"``...)."""
        return self._checkpoint.resolve(self._name).code or dtype_name(self._dtype)

    def __getitem__(self, key: Any) -> torch.Tensor:
        ranges, dropped = _ranges(key, self._shape, self._name)
        whole = all((a, b) == (0, size) for (a, b), size in zip(ranges, self._shape, strict=True))
        raw = None if whole else _raw_file(self._checkpoint, self._name)
        if raw is None:  # whole tensors are read (and verified) by the checkpoint itself
            tensor = self._checkpoint.read([self._name])[self._name]
            result = tensor[tuple(slice(a, b) for a, b in ranges)]
        else:
            result = self._read(raw, ranges)
        for dim in reversed(dropped):
            result = result.squeeze(dim)
        return result

    def _read(self, raw: tuple[StoredObject, int], ranges: Ranges) -> torch.Tensor:
        file, base = raw
        result = torch.empty([b - a for a, b in ranges], dtype=self._dtype)
        if result.numel() == 0:
            return result
        size = result.element_size()
        offsets, length = _runs(ranges, self._shape)
        memory = tensor_memory(result)
        run_bytes = length * size
        at = 0
        batch: list[tuple[int, memoryview]] = []
        for offset in offsets:
            batch.append((base + offset * size, memory[at : at + run_bytes]))
            at += run_bytes
            if len(batch) == MAX_IOV and not file.remote:
                self._read_batch(file, batch)
                batch = []
        if file.remote and len(_groups(batch)) > REMOTE_RUNS:
            self._read_span(file, batch)
        elif batch:
            self._read_batch(file, batch)
        return result

    def _read_batch(self, file: StoredObject, batch: list[tuple[int, memoryview]]) -> None:
        """Read runs; runs that follow each other in the file share one read."""
        for start, end in _groups(batch):
            views = [view for _, view in batch[start:end]]
            offset, want = batch[start][0], sum(len(v) for v in views)
            done = 0
            while done < want:
                got = file.readv(_after(views, done), offset + done)
                if got <= 0:
                    raise self._short()
                done += got

    def _read_span(self, file: StoredObject, batch: list[tuple[int, memoryview]]) -> None:
        """One request for everything from the first run to the end of the last, copied out."""
        first = batch[0][0]
        span = file.read(batch[-1][0] + len(batch[-1][1]) - first, first)
        for offset, view in batch:
            piece = span[offset - first : offset - first + len(view)]
            if len(piece) != len(view):
                raise self._short()
            view[:] = piece

    def _short(self) -> TruncatedFileError:
        return TruncatedFileError(
            f"{self._checkpoint.label}: tensor {self._name!r} ends early "
            "(the file is truncated or shrank while being read)"
        )

    def __repr__(self) -> str:
        return f"<TensorSlice {self._name!r} {self.get_dtype()} {self.get_shape()}>"


def _groups(batch: list[tuple[int, memoryview]]) -> list[tuple[int, int]]:
    """(start, end) indexes of the runs of ``batch`` that follow each other in the file."""
    groups = []
    start = 0
    while start < len(batch):
        end = start + 1
        while end < len(batch) and batch[end][0] == batch[end - 1][0] + len(batch[end - 1][1]):
            end += 1
        groups.append((start, end))
        start = end
    return groups


def _after(views: list[memoryview], done: int) -> list[ByteBuffer]:
    rest: list[ByteBuffer] = []
    for view in views:
        if done >= len(view):
            done -= len(view)
            continue
        rest.append(view[done:])
        done = 0
    return rest
