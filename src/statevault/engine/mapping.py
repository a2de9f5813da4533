"""Private (copy-on-write) memory maps of checkpoint files, and checking tensors in them.

The opt-in ``mmap=True`` loads hand out tensors that are views of one ``MAP_PRIVATE`` mapping
of the file instead of copies of its bytes. Processes on one machine that map the same file
share the page cache's one copy of the weights: a page is read from disk once and mapped
into each of them. A write to a mapped tensor copies just that page into the writing process
(copy-on-write): it never reaches the file or another process. The mapping lives as long as
any tensor viewing it (each holds it, with its own duplicate of the descriptor), not as long
as the checkpoint that made it: closing the checkpoint unmaps nothing.

A mapped file must not shrink while mapped: touching a page past its new end raises SIGBUS,
which no code can catch. Its size is checked against what the header needs when it is
mapped (a truncated file raises ``TruncatedFileError`` then). statevault's own saves replace
a file by rename, a new inode, so they never shrink one that is mapped; a tool that rewrites
a file in place would.

``check_mapped`` verifies tensors from the mapping before they are handed out: a large
tensor of format 3 is cut at its block boundaries so any thread checks any block, smaller
ones go in runs, and the tasks spread over a thread pool (xxh3 releases the GIL). Hashing
only reads, so the pages it brings in stay shared.

May import: ``fileformat.checksums``, ``statevault.errors``, the engine's ``memory``,
``tuning`` and ``verified``. Imported by ``readers.safetensors_file``.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import NamedTuple

import torch

from statevault.engine import tuning
from statevault.engine.memory import tensor_memory
from statevault.engine.verified import check_bytes, damaged
from statevault.errors import TruncatedFileError
from statevault.fileformat import checksums


class MappedTensor(NamedTuple):
    """Where one stored tensor's bytes are in the file, and what they are."""

    name: str
    offset: int  # absolute, in the file
    nbytes: int
    dtype: torch.dtype
    shape: tuple[int, ...]
    expected: str | None  # recorded digest (joined block digests in format 3), or None


def map_file(fd: int, *, needed: int, source: object) -> torch.Tensor:
    """The whole open file as one uint8 tensor over a private, copy-on-write mapping.

    ``needed`` is how many bytes the header says the file has: fewer on disk now (truncated
    since it was opened) raises :class:`TruncatedFileError` here, before any page is touched.
    """
    size = os.fstat(fd).st_size
    if size < needed:
        raise TruncatedFileError(
            f"{source}: the file has {size} bytes but its header needs {needed}: it was "
            "truncated or is being rewritten in place; restore it, or save it again"
        )
    # ACCESS_COPY is MAP_PRIVATE with PROT_READ | PROT_WRITE: writable, never written back
    mapping = mmap.mmap(fd, size, access=mmap.ACCESS_COPY)
    return torch.frombuffer(mapping, dtype=torch.uint8)  # holds the mapping alive


def view_of(whole: torch.Tensor, item: MappedTensor) -> tuple[torch.Tensor, bool]:
    """``item`` as a tensor viewing the mapping, and False; or a copy of it and True.

    A tensor whose offset in the file is not a multiple of its element size (safetensors
    does not align them) is copied into fresh, aligned memory: torch's kernels may assume
    aligned elements. The mapping starts on a page, so an aligned offset is an aligned address.
    """
    raw = whole[item.offset : item.offset + item.nbytes]
    copied = item.offset % item.dtype.itemsize != 0
    if copied:
        raw = raw.clone()
    return raw.view(item.dtype).reshape(item.shape), copied


def check_mapped(
    whole: torch.Tensor,
    items: Sequence[MappedTensor],
    *,
    block_bytes: int | None,
    source: object,
) -> None:
    """Check every item that has a digest against the mapped bytes, on a thread pool.

    Raises ``ChecksumMismatchError`` naming the tensor (and the block, in format 3).
    """
    memory = tensor_memory(whole)
    tasks: list[tuple[int, Callable[[], None]]] = []
    run: list[MappedTensor] = []
    run_bytes = 0
    for item in items:
        if item.expected is None:
            continue
        if block_bytes is not None and item.nbytes > block_bytes:
            # whole blocks per task: each piece is checked against its own digests
            step = block_bytes * max(1, tuning.SPLIT_BYTES // block_bytes)
            for at in range(0, item.nbytes, step):
                size = min(step, item.nbytes - at)
                piece = partial(_check_piece, memory, item, at, size, block_bytes, source)
                tasks.append((size, piece))
            continue
        run.append(item)
        run_bytes += item.nbytes
        if run_bytes >= tuning.BATCH_BYTES:
            tasks.append((run_bytes, partial(_check_run, memory, run, block_bytes, source)))
            run, run_bytes = [], 0
    if run:
        tasks.append((run_bytes, partial(_check_run, memory, run, block_bytes, source)))
    total = sum(size for size, _ in tasks)
    threads = min(len(tasks), os.cpu_count() or 1, tuning.MAX_THREADS)
    if threads <= 1 or total < tuning.PARALLEL_MIN_BYTES:
        for _, task in tasks:
            task()
        return
    tasks.sort(key=lambda task: -task[0])  # biggest first: both threads busy to the end
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="statevault-map") as pool:
        for future in [pool.submit(task) for _, task in tasks]:
            future.result()


def _check_run(
    memory: memoryview, run: Sequence[MappedTensor], block_bytes: int | None, source: object
) -> None:
    for item in run:
        view = memory[item.offset : item.offset + item.nbytes]
        check_bytes(source, item.name, item.expected, view, block_bytes)


def _check_piece(
    memory: memoryview,
    item: MappedTensor,
    at: int,
    size: int,
    block_bytes: int,
    source: object,
) -> None:
    """Bytes ``at``.. ``at + size`` of a large format-3 tensor against their block digests."""
    if item.expected is None:
        return
    chars, first = checksums.DIGEST_CHARS, at // block_bytes
    count = checksums.block_count(size, block_bytes)
    wanted = item.expected[first * chars : (first + count) * chars]
    start = item.offset + at
    found = checksums.digest(memory[start : start + size], block_bytes)
    if found != wanted:
        raise damaged(source, item.name, wanted, found, block_bytes=block_bytes, first_block=first)
