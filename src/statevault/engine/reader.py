"""Reading one checkpoint file: its validated header, and parallel, verified tensor reads.

Reads go straight into the destination tensor's memory with ``preadv`` (no intermediate
buffer, the GIL released), spread over the engine's long-lived ``workers``, each piece
hashed as it arrives while it is still in cache. Small tensors that lie back to back in
the file are read by one scatter ``preadv`` per run, so a state of 20,000 small tensors
costs ~100 syscalls. pread was chosen over mmap by measurement: it fills the destination in one
kernel copy, leaves no file-backed mappings behind, and lets a truncated file raise an
error instead of a SIGBUS (a memcpy from a mapping gained nothing in A/B runs here).
CUDA destinations go through ``staging``. A remote object (``storage.StoredObject.remote``,
S3 through fsspec) is read the same way with larger requests: its header with one generous
ranged read (a second only for a longer header), then only the wanted tensors, each task
one request for a whole tensor, block or run, on more threads, every block verified. May import: ``fileformat`` (container, table;
never its metadata codec, which the caller brings as ``digest_header``),
``statevault.errors``, the engine's ``memory``, ``staging``, ``storage``, ``tuning``,
``verified``, ``workers``. Imported by ``readers`` and the engine's scans.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch

from statevault.engine import staging, tuning, workers
from statevault.engine.memory import ByteBuffer, remaining_after, tensor_memory
from statevault.engine.storage import LOCAL_STORAGE, LocalFile, Storage, StoredObject
from statevault.engine.verified import TensorBytes, check_bytes, ended_early, read_blocks
from statevault.errors import CorruptFileError, StateVaultError, TruncatedFileError
from statevault.fileformat.container import (
    PREFIX_BYTES,
    Header,
    header_length,
    header_text,
    parse_header_text,
)
from statevault.fileformat.table import TensorEntry

# where, into which contiguous CPU tensor, expected digest. The tensor, not a view of it: views
# cost ~400 bytes each, so they are made a batch at a time (8 MiB for 20,000 tensors otherwise).
ReadJob = tuple[TensorEntry, torch.Tensor, "str | None"]
# (8-byte prefix, raw header bytes) -> whatever the format wants to know of the bytes
# themselves before they are decoded and dropped (format 2's header digest).
HeaderDigest = Callable[[bytes, bytes], Any]


class FileReader:
    """An open checkpoint file: its validated header and verified reads of its tensors.

    ``block_bytes`` is None (one digest per tensor) until the opener, having decoded the
    format's metadata, sets the block size that the file's digests cover (format 3).
    """

    block_bytes: int | None = None

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        digest_header: HeaderDigest | None = None,
        storage: Storage = LOCAL_STORAGE,
        opened: tuple[StoredObject, bytes] | None = None,
    ) -> None:
        """``opened``: the object already open and its first bytes already read (a URL
        whose kind was sniffed with the header's request): no second open or read."""
        # a URL stays a string: Path() would fold its "//" and every message would misname it
        self.path: Path | str = (
            path if isinstance(path, str) and storage is not LOCAL_STORAGE else Path(path)
        )
        self.file: StoredObject = storage.open(self.path) if opened is None else opened[0]
        try:
            self.file_size = self.file.size
            # a local file: the 8-byte length, then the header; a remote object: one
            # generous request that usually holds both (each request is a round trip)
            guess = tuning.HEAD_GUESS_BYTES if self.file.remote else 0
            head = opened[1] if opened else self._read_head(max(PREFIX_BYTES + 1, guess), 0)
            length = header_length(
                head[: PREFIX_BYTES + 1], file_size=self.file_size, source=str(self.path)
            )
            if PREFIX_BYTES + length <= len(head):  # the usual case: one read did it all
                raw = head[PREFIX_BYTES : PREFIX_BYTES + length]
            else:
                raw = self._read_head(length, PREFIX_BYTES)
            prefix = head[:PREFIX_BYTES]
            del head
            if len(raw) != length:
                raise TruncatedFileError(
                    f"{self.path}: file shrank while its header was read (read {len(raw)} of "
                    f"{length} bytes); it is being rewritten in place or was truncated"
                )
            # hashed before parsing: a format-2 header's digest covers its raw bytes
            self.signed_digest = digest_header(prefix, raw) if digest_header else None
            text = header_text(raw, source=str(self.path))
            del raw  # megabytes for 20,000 tensors: parse with one copy alive, not two
            self.header: Header = parse_header_text(
                text, header_bytes=length, file_size=self.file_size, source=str(self.path)
            )
            del text
        except StateVaultError:  # already in our words (some are OSErrors: a storage's)
            self.file.close()
            raise
        except OSError as exc:
            self.file.close()
            raise CorruptFileError(f"{self.path}: could not be read ({exc.strerror})") from exc
        except BaseException:
            self.file.close()
            raise

    def _read_head(self, nbytes: int, offset: int) -> bytes:
        """Up to ``nbytes`` from ``offset``: fewer where the file ends first."""
        return self.file.read(max(0, min(nbytes, self.file_size - offset)), offset)

    def fileno(self) -> int:
        """The open descriptor of a local file (remote objects have none: read ``file``)."""
        if not isinstance(self.file, LocalFile):
            raise StateVaultError(f"internal error: {self.path} is remote and has no descriptor")
        return self.file.fd

    def request_bytes(self, local: int) -> int:
        """How much one read asks for: ``local`` from a file, far more from an object store."""
        return max(local, tuning.REMOTE_REQUEST_BYTES) if self.file.remote else local

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> FileReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _tensor(self, entry: TensorEntry, expected: str | None) -> TensorBytes:
        base = self.header.data_offset + entry.start
        return TensorBytes(
            self.file, base, entry.name, entry.nbytes, expected, block_bytes=self.block_bytes
        )

    def read_into(self, entry: TensorEntry, dest: memoryview, expected: str | None) -> None:
        """Fill ``dest`` with the tensor's bytes, checking ``expected`` digest when given."""
        tensor = self._tensor(entry, expected)
        step = self.request_bytes(
            tuning.CHUNK_BYTES if expected is None else tuning.VERIFY_CHUNK_BYTES
        )
        for done in range(0, entry.nbytes, step):
            tensor.read(dest[done : min(done + step, entry.nbytes)], done)
        tensor.check()

    def read_batch(self, batch: Sequence[ReadJob]) -> None:
        """Read tensors that lie back to back in the file with one scatter read, then verify.

        ``preadv`` fills every destination straight from the page cache in one syscall; the
        bytes are hashed right after, while the batch (at most ``BATCH_BYTES``) is in cache.
        """
        memory = [tensor_memory(dest) if dest.nbytes else b"" for _, dest, _ in batch]
        views: list[ByteBuffer] = [view for view in memory if not isinstance(view, bytes)]
        origin = batch[0][0].start
        offset = self.header.data_offset + origin
        total = sum(len(view) for view in views)
        done = 0
        while views:
            got = self.file.readv(views, offset + done)
            if got <= 0:
                lost = next(e for e, _, _ in batch if e.end - origin > done)
                raise ended_early(
                    self.path, lost.name, max(0, done - (lost.start - origin)), lost.nbytes
                )
            done += got
            views = remaining_after(views, got)
        if done != total:  # unreachable by construction; a cheap guard for future edits
            raise StateVaultError("internal error: batched read size mismatch")
        for (entry, _, expected), view in zip(batch, memory, strict=True):
            check_bytes(self.path, entry.name, expected, view, self.block_bytes)

    def read_rows(
        self, dests: Sequence[torch.Tensor | None], digests: Mapping[str, str] | None
    ) -> None:
        """Read tensor ``row`` of the header into ``dests[row]`` wherever that is a tensor.

        Destinations are indexed by row (file order) so that nothing is built per tensor until
        its read runs: a list of (entry, destination, digest) jobs cost ~5 MiB for 20,000
        tensors, the largest item of a ``load_into``. ``digests`` (name -> hex) checks each
        tensor; None reads unverified. Large tensors are one task each (their checksum is a
        single stream, so one thread owns it), biggest first so both threads stay busy to
        the end; runs of small tensors back to back in the file are read by one ``preadv``.
        Where the digests cover blocks (format 3), or none are checked, a large tensor is
        split into block-aligned pieces instead, so every thread reads and checks any of
        them, with requests large and many enough to keep a disk busy.
        """
        table = self.header.entries
        limit = self.request_bytes(tuning.VERIFY_CHUNK_BYTES if digests else tuning.BATCH_BYTES)
        piece = self.block_bytes if digests else tuning.SPLIT_BYTES
        if piece is not None and self.file.remote:  # whole blocks, fewer and larger requests
            piece *= max(1, -(-tuning.REMOTE_PIECE_BYTES // piece))
        tasks: list[tuple[int, Callable[[], None]]] = []
        for first, end, nbytes in plan_reads(table.starts, table.ends, dests, limit=limit):
            if piece is not None and end - first == 1 and nbytes > piece:
                for at in range(0, nbytes, piece):
                    size = min(piece, nbytes - at)
                    tasks.append((size, partial(self._read_piece, first, at, size, dests, digests)))
            else:
                tasks.append((nbytes, partial(self._read_rows, first, end, dests, digests)))
        tasks.sort(key=lambda task: -task[0])  # stable: a tensor's pieces stay in file order
        total = sum(size for size, _ in tasks)
        if self.file.remote:  # threads wait on round trips: as many as requests, up to a cap
            threads = min(len(tasks), tuning.REMOTE_THREADS)
        else:
            threads = min(len(tasks), os.cpu_count() or 1, tuning.MAX_THREADS)
        if threads <= 1 or (total < tuning.PARALLEL_MIN_BYTES and not self.file.remote):
            for _, task in tasks:
                task()
            return
        workers.run([task for _, task in tasks], threads)

    def _read_rows(
        self,
        first: int,
        end: int,
        dests: Sequence[torch.Tensor | None],
        digests: Mapping[str, str] | None,
    ) -> None:
        """One task of ``read_rows``: a large tensor, or a run of small ones, by row."""
        table = self.header.entries
        jobs: list[ReadJob] = []
        for row in range(first, end):
            dest = dests[row]
            if dest is None:  # plan_reads never puts a gap inside a task
                raise StateVaultError("internal error: read task spans an unwanted tensor")
            jobs.append((table.entry(row), dest, digests[table.names[row]] if digests else None))
        if len(jobs) == 1 and jobs[0][0].nbytes >= tuning.SMALL_READ_BYTES:
            entry, dest, expected = jobs[0]
            self.read_into(entry, tensor_memory(dest), expected)
        else:
            self.read_batch(jobs)

    def _read_piece(
        self,
        row: int,
        at: int,
        size: int,
        dests: Sequence[torch.Tensor | None],
        digests: Mapping[str, str] | None,
    ) -> None:
        """One task of ``read_rows``: bytes ``at``..``at + size`` of a large tensor, checked."""
        table, dest = self.header.entries, dests[row]
        if dest is None:
            raise StateVaultError("internal error: read task for an unwanted tensor")
        name, nbytes = table.names[row], table.ends[row] - table.starts[row]
        base = self.header.data_offset + table.starts[row]
        view = tensor_memory(dest)[at : at + size]
        expected = digests[name] if digests else None
        request = self.request_bytes(tuning.VERIFY_CHUNK_BYTES if expected else tuning.CHUNK_BYTES)
        read_blocks(
            self.file,
            base,
            name,
            nbytes,
            view,
            at,
            expected,
            self.block_bytes,
            request_bytes=request,
        )

    def read_to_device(
        self,
        jobs: Sequence[ReadJob],
        *,
        staging_bytes: int | None = None,
        buffers: int | None = None,
    ) -> None:
        """Read tensors into (GPU) device memory through a few pinned host buffers (``staging``)."""
        staging.read_to_device(
            self.file,
            self.header.data_offset,
            jobs,
            staging_bytes=tuning.STAGING_BYTES if staging_bytes is None else staging_bytes,
            buffers=tuning.STAGING_BUFFERS if buffers is None else buffers,
            block_bytes=self.block_bytes,
        )

    def stream(
        self, entry: TensorEntry, *, chunk_bytes: int, expected: str | None
    ) -> Iterator[bytearray]:
        """The tensor's bytes in fresh buffers of at most ``chunk_bytes``, checked at the end.

        For consumers that look at a tensor piece by piece (verify, diff) and must keep
        memory bounded whatever the tensor's size.
        """
        tensor = self._tensor(entry, expected)
        for start in range(0, entry.nbytes, max(1, chunk_bytes)):
            buffer = bytearray(min(chunk_bytes, entry.nbytes - start))
            tensor.read(memoryview(buffer), start)
            yield buffer
        tensor.check()


def plan_reads(
    starts: Sequence[int], ends: Sequence[int], wanted: Sequence[object], *, limit: int
) -> Iterator[tuple[int, int, int]]:
    """The read tasks for the rows whose ``wanted`` entry is not None, in file order.

    Yields ``(first_row, end_row, nbytes)``: one large tensor alone, or a run of small
    tensors back to back in the file, at most ``limit`` bytes (but at least one tensor) and
    ``MAX_IOV`` tensors. Rows follow each other in the file, so a run is a range of rows.
    """
    small, max_iov = tuning.SMALL_READ_BYTES, tuning.MAX_IOV
    first, size = -1, 0
    for row, item in enumerate(wanted):
        nbytes = ends[row] - starts[row]
        if first >= 0 and (
            item is None or nbytes >= small or size + nbytes > limit or row - first >= max_iov
        ):
            yield first, row, size
            first = -1
        if item is None:
            continue
        if nbytes >= small:
            yield row, row + 1, nbytes
            continue
        if first < 0:
            first, size = row, 0
        size += nbytes
    if first >= 0:
        yield first, len(wanted), size
