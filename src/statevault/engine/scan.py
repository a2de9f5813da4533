"""Whole-file scans for the tools: hash every tensor of a file, collecting every mismatch.

``load`` stops at the first damaged tensor; ``verify`` must read everything and name every
damaged tensor. It uses the load engine's plan (``reader.plan_reads``: a large tensor per task,
cut into block-sized pieces where format 3 has a digest per block; runs of small tensors
back to back in the file read by one ``preadv``; at most ``VERIFY_CHUNK_BYTES`` per read so
each piece is hashed while still in L2), but reads into a small scratch buffer per task
instead of destination tensors, so memory stays flat for any file size. A mismatch is
recorded as ``(row, digest found)``; rows are file order, so the result is sorted once at
the end: linear in the number of tensors, damaged or not. Reading and checking go through
``verified``, as loads do. May import: the engine's ``reader``, ``verified``, ``tuning``,
``workers``, ``progress``; ``fileformat.checksums``. Imported by ``tools``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from typing import TypeVar

from statevault.engine import tuning, workers
from statevault.engine.progress import Progress
from statevault.engine.reader import FileReader, plan_reads
from statevault.engine.verified import TensorBytes, check_bytes, ended_early, read_exact
from statevault.fileformat import checksums

T = TypeVar("T")


def default_threads() -> int:
    """Reader threads for a scan: hashing releases the GIL, so a few threads keep up."""
    return max(1, min(4, os.cpu_count() or 1))


def run_parallel(tasks: Sequence[Callable[[threading.Event], T]], threads: int) -> list[T]:
    """Run ``tasks`` on ``threads`` threads; their results in task order.

    Each task gets a stop event it checks between chunks: on the first error, or Ctrl-C in
    the caller, queued tasks are cancelled and running ones stop at their next chunk, so an
    interrupted scan of a large file ends at once instead of hashing the rest.
    """
    stop = threading.Event()
    if threads <= 1 or len(tasks) <= 1:
        return [task(stop) for task in tasks]
    return workers.run([partial(task, stop) for task in tasks], threads, stop=stop)


Mismatch = tuple[int, str]  # (row in the header table, hex digest found)
# (row, byte offset in the tensor, digests found from there): what one read task found wrong
Finding = tuple[int, int, str]


class _Hasher:
    """The read tasks of one file; each returns the findings it made."""

    def __init__(
        self, reader: FileReader, digests: Mapping[str, str], progress: Progress | None
    ) -> None:
        self.reader = reader
        self.table = reader.header.entries
        self.digests = digests
        self.progress = progress

    def piece(self, row: int, at: int, size: int, stop: threading.Event) -> list[Finding]:
        """Bytes ``at``..``at + size`` of a large tensor, hashed chunk by chunk.

        Where the digests cover blocks (format 3), ``at`` is a block boundary and the piece
        is checked against its own blocks' digests, whichever thread takes it; otherwise the
        piece is the whole tensor.
        """
        name = self.table.names[row]
        base = self.reader.header.data_offset + self.table.starts[row] + at
        block = self.reader.block_bytes
        hasher = checksums.new_hasher(block)
        request = self.reader.request_bytes(tuning.VERIFY_CHUNK_BYTES)
        view = memoryview(bytearray(min(request, size)))
        for done in range(0, size, len(view)):
            if stop.is_set():
                return []
            chunk = view[: min(len(view), size - done)]
            read_exact(
                self.reader.file.readv, chunk, base + done, _short(self.reader, row, at + done)
            )
            hasher.update(chunk)
            if self.progress is not None:
                self.progress.advance(len(chunk))
        found: str = hasher.hexdigest()
        skip = (at // block if block else 0) * checksums.DIGEST_CHARS
        return [] if found == self.digests[name][skip : skip + len(found)] else [(row, at, found)]

    def run(self, first: int, end: int, stop: threading.Event) -> list[Finding]:
        """Small tensors back to back in the file: one read, then one digest each."""
        if stop.is_set():
            return []
        starts, ends, names = self.table.starts, self.table.ends, self.table.names
        origin = starts[first]
        view = memoryview(bytearray(ends[end - 1] - origin))
        if len(view):
            short = _short(self.reader, first, 0)
            read_exact(self.reader.file.readv, view, self.reader.header.data_offset + origin, short)
        digest, digests, block = checksums.digest, self.digests, self.reader.block_bytes
        bad = []
        for row in range(first, end):
            found = digest(view[starts[row] - origin : ends[row] - origin], block)
            if found != digests[names[row]]:
                bad.append((row, 0, found))
        if self.progress is not None:
            self.progress.advance(len(view))
        return bad


def _short(reader: FileReader, row: int, start: int) -> Callable[[int], Exception]:
    """The error for a read of ``row`` from ``start`` that met the end of the file."""
    table = reader.header.entries
    name, nbytes = table.names[row], table.ends[row] - table.starts[row]
    return lambda done: ended_early(reader.path, name, start + done, nbytes)


def hash_rows(
    reader: FileReader,
    digests: Mapping[str, str],
    *,
    progress: Progress | None = None,
    threads: int | None = None,
) -> tuple[list[Mismatch], int, int]:
    """(mismatches in file order, tensors hashed, bytes hashed) for every tensor in ``digests``.

    Tensors without a recorded digest are skipped. Reads go in parallel like ``load``'s: a
    large tensor whose digests cover blocks (format 3) is cut into block-aligned pieces that
    any thread reads and checks, so the disk sees several requests at once, cold, even for
    a file of one tensor. A file that ends early raises :class:`TruncatedFileError`.
    """
    table = reader.header.entries
    wanted = [name if name in digests else None for name in table.names]
    hasher = _Hasher(reader, digests, progress)
    sized: list[tuple[int, Callable[[threading.Event], list[Finding]]]] = []
    count = 0
    step = reader.block_bytes
    if step is not None and reader.file.remote:  # whole blocks, fewer and larger requests
        step *= max(1, -(-tuning.REMOTE_PIECE_BYTES // step))
    limit = reader.request_bytes(tuning.VERIFY_CHUNK_BYTES)
    for first, end, nbytes in plan_reads(table.starts, table.ends, wanted, limit=limit):
        count += end - first
        if end - first > 1 or nbytes < tuning.SMALL_READ_BYTES:
            sized.append((nbytes, partial(hasher.run, first, end)))
            continue
        for at in range(0, nbytes, step or nbytes):
            size = min(step or nbytes, nbytes - at)
            sized.append((size, partial(hasher.piece, first, at, size)))
    sized.sort(key=lambda task: -task[0])  # big ones first keeps every thread busy to the end
    total = sum(size for size, _ in sized)
    if reader.file.remote:  # each read is a round trip: overlap them whatever the size
        used = threads or tuning.REMOTE_THREADS
    else:
        used = 1 if total < tuning.PARALLEL_MIN_BYTES else (threads or default_threads())
    findings = [bad for result in run_parallel([t for _, t in sized], used) for bad in result]
    return _mismatches(findings, table.names, digests, reader.block_bytes), count, total


def _mismatches(
    findings: list[Finding], names: Sequence[str], digests: Mapping[str, str], block: int | None
) -> list[Mismatch]:
    """One mismatch per damaged tensor, in file order: its recorded digests with what its
    damaged pieces were found to hash to put in their place (the whole digest, unsplit)."""
    found: dict[int, str] = {}
    for row, at, digest in sorted(findings):
        recorded = found.get(row, digests[names[row]])
        skip = (at // block if block else 0) * checksums.DIGEST_CHARS
        found[row] = recorded[:skip] + digest + recorded[skip + len(digest) :]
    return sorted(found.items())


class ChunkReader:
    """Streams large tensors of one file, verified, through one reused buffer.

    For a consumer that is done with a chunk before asking for the next (``diff`` compares a
    chunk of A with its partner in B while both are still in cache). Fresh buffers per
    chunk cost a page fault per 4 KiB: with them, diffing two 512 MiB files took 3x the time
    of verifying them. Each chunk is read and hashed ``VERIFY_CHUNK_BYTES`` at a time; the
    tensor's checksum is checked after its last chunk, before its last chunk is handed out.
    """

    def __init__(self, reader: FileReader, digests: Mapping[str, str]) -> None:
        self.reader = reader
        self.digests = digests
        self._buffer = memoryview(bytearray(0))

    def _buffer_for(self, nbytes: int) -> memoryview:
        if len(self._buffer) < nbytes:
            self._buffer = memoryview(bytearray(nbytes))
        return self._buffer[:nbytes]

    def chunks(self, name: str, *, chunk_bytes: int) -> Iterator[memoryview]:
        table = self.reader.header.entries
        row = table.row(name)
        nbytes = table.ends[row] - table.starts[row]
        base = self.reader.header.data_offset + table.starts[row]
        tensor = TensorBytes(
            self.reader.file,
            base,
            name,
            nbytes,
            self.digests.get(name),
            block_bytes=self.reader.block_bytes,
        )
        step = self.reader.request_bytes(tuning.VERIFY_CHUNK_BYTES)
        for done in range(0, nbytes, chunk_bytes):
            piece = self._buffer_for(min(chunk_bytes, nbytes - done))
            for at in range(0, len(piece), step):
                tensor.read(piece[at : at + step], done + at)
            if done + len(piece) == nbytes:
                tensor.check()
            yield piece


class RowReader:
    """Reads chosen small tensors of one file, verified, into one reused buffer.

    Rows that follow each other in the file share one read. The views it returns are valid
    until the next call. Unlike ``Checkpoint.read``, the cost is in the rows asked for, not
    in the size of the file's table (``diff`` reads a 200k-tensor file in ~200 batches).
    """

    def __init__(self, reader: FileReader, digests: Mapping[str, str]) -> None:
        self.reader = reader
        self.digests = digests
        self._buffer = memoryview(bytearray(0))

    def read(self, names: Sequence[str]) -> dict[str, memoryview]:
        table = self.reader.header.entries
        starts, ends = table.starts, table.ends
        rows = sorted({table.row(name) for name in names})
        total = sum(ends[row] - starts[row] for row in rows)
        if len(self._buffer) < total:
            self._buffer = memoryview(bytearray(total))
        base, readv = self.reader.header.data_offset, self.reader.file.readv
        views: dict[str, memoryview] = {}
        at = index = 0
        while index < len(rows):
            last = index
            while last + 1 < len(rows) and rows[last + 1] == rows[last] + 1:
                last += 1
            first_row, origin = rows[index], starts[rows[index]]
            span = ends[rows[last]] - origin
            if span:
                short = _short(self.reader, first_row, 0)
                read_exact(readv, self._buffer[at : at + span], base + origin, short)
            for row in rows[index : last + 1]:
                view = self._buffer[at + starts[row] - origin : at + ends[row] - origin]
                name = table.names[row]
                expected = self.digests.get(name)
                check_bytes(self.reader.path, name, expected, view, self.reader.block_bytes)
                views[name] = view
            at += span
            index = last + 1
        return views
