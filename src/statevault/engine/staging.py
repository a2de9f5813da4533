"""Filling device (CUDA) tensors from a file through a few reused host buffers.

The file is streamed in order through ``buffers`` staging buffers of ``staging_bytes``
each (bounded host memory, whatever the model size). While the copy engine moves buffer
*k* to the device on a side stream, the CPU reads and hashes buffer *k+1*; a buffer is
refilled only after its copy's event completes. Small tensors that lie back to back share
one buffer fill. On a CPU destination the same pipeline runs with plain buffers and
synchronous copies (which is how it is tested without a GPU). May import: ``fileformat``
(the tensor table), the engine's ``memory``, ``storage``, ``verified``. Imported by the
engine's reader.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from statevault.engine.memory import tensor_memory
from statevault.engine.storage import StoredObject
from statevault.engine.verified import TensorBytes, ended_early, read_exact
from statevault.fileformat.table import TensorEntry

Job = tuple[TensorEntry, torch.Tensor, "str | None"]  # where, into which tensor, digest
Piece = tuple[TensorEntry, int, int, torch.Tensor, "str | None"]  # entry, start, size, ...


def plan_staging(jobs: Sequence[Job], staging_bytes: int) -> list[list[Piece]]:
    """Cut tensors (in file order) into staging-buffer fills of ``(entry, start, size, ...)``.

    A fill is one contiguous range of the file, at most ``staging_bytes`` long: a slice of
    a large tensor, or several small tensors that lie back to back.
    """
    fills: list[list[Piece]] = []
    current: list[Piece] = []
    used = 0
    for entry, dest, expected in sorted(jobs, key=lambda job: job[0].start):
        start = 0
        while True:
            contiguous = bool(current) and current[-1][0].end == entry.start and start == 0
            if current and (not contiguous or used == staging_bytes):
                fills.append(current)
                current, used = [], 0
            size = min(entry.nbytes - start, staging_bytes - used)
            current.append((entry, start, size, dest, expected))
            used += size
            start += size
            if start >= entry.nbytes:
                break
            fills.append(current)  # the tensor goes on in the next fill
            current, used = [], 0
    if current:
        fills.append(current)
    return fills


def read_to_device(
    file: StoredObject,
    data_offset: int,
    jobs: Sequence[Job],
    *,
    staging_bytes: int,
    buffers: int,
    block_bytes: int | None = None,
) -> None:
    """Read tensors into (GPU) device memory through ``buffers`` pinned host buffers.

    ``block_bytes``: the file's digests cover blocks of that size (format 3)."""
    if not jobs:
        return
    device = jobs[0][1].device
    cuda = device.type == "cuda"
    host = [torch.empty(staging_bytes, dtype=torch.uint8, pin_memory=cuda) for _ in range(buffers)]
    views = [tensor_memory(buffer) for buffer in host]
    stream = torch.cuda.Stream(device) if cuda else None  # type: ignore[no-untyped-call]
    pending: list[Any] = [None] * buffers  # the event of each buffer's last copy
    checks: dict[str, TensorBytes] = {}  # tensors being hashed, until their last piece
    for number, fill in enumerate(plan_staging(jobs, staging_bytes)):
        slot = number % buffers
        if pending[slot] is not None:
            pending[slot].synchronize()
        entry, start = fill[0][0], fill[0][1]
        length = sum(piece[2] for piece in fill)

        def short(done: int, entry: TensorEntry = entry, start: int = start) -> Exception:
            return ended_early(file.name, entry.name, start + done, entry.nbytes)

        read_exact(file.readv, views[slot][:length], data_offset + entry.start + start, short)
        _check_and_copy(
            file, data_offset, fill, host[slot], views[slot], checks, stream, block_bytes
        )
        if stream is not None:
            event = torch.cuda.Event()  # type: ignore[no-untyped-call]
            event.record(stream)
            pending[slot] = event
    if stream is not None:
        stream.synchronize()  # the caller may use the tensors on any stream right away


def _check_and_copy(
    file: StoredObject,
    data_offset: int,
    fill: list[Piece],
    buffer: torch.Tensor,
    view: memoryview,
    checks: dict[str, TensorBytes],
    stream: Any,
    block_bytes: int | None,
) -> None:
    """Hash each piece of a filled buffer, then copy it to its device tensor (async on CUDA)."""
    at = 0
    for entry, start, size, dest, expected in fill:
        if expected is not None:
            check = checks.get(entry.name)
            if check is None:
                base = data_offset + entry.start
                check = checks[entry.name] = TensorBytes(
                    file, base, entry.name, entry.nbytes, expected, block_bytes=block_bytes
                )
            check.hash(view[at : at + size])
            if start + size == entry.nbytes:
                checks.pop(entry.name).check()
        target = dest.detach().reshape(-1).view(torch.uint8)[start : start + size]
        source = buffer[at : at + size]
        if stream is not None:
            with torch.cuda.stream(stream):
                target.copy_(source, non_blocking=True)
        else:
            target.copy_(source)
        at += size
