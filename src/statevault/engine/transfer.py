"""The I/O engine: straight-from-memory atomic writes and parallel, verified reads.

Writes never touch the final path until the new file is complete: data goes to a temporary
file in the same directory, is fsynced, then renamed over the target, and the directory is
fsynced so the rename itself survives a power cut. A process killed at any moment leaves the
previous file intact (at worst a stray ``.NAME.*.svtmp`` file beside it, which the next save
into that directory removes: ``_temps``). Digests are computed over the very bytes written
(copied first when they are the caller's), so a file that was saved always verifies.

Reads go straight into the destination tensor's memory with ``os.preadv`` (no intermediate
buffer, the GIL released), spread over a thread pool, each tensor hashed as its chunks arrive
while they are still in cache. Small tensors that lie back to back in the file are read by
one scatter ``preadv`` per run and written by one gather ``writev``, so a state of 20,000
small tensors costs ~100 syscalls. CUDA destinations are filled through a pair of pinned
staging buffers, overlapping file reads with host-to-device copies. pread was chosen over
mmap by measurement: it fills the destination in one kernel copy, leaves no file-backed
mappings behind, and lets a truncated file raise an error instead of a SIGBUS.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import mmap
import os
import stat
import sys
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeAlias, TypeGuard

import torch

from statevault.engine import target as _target
from statevault.engine import temps
from statevault.engine.progress import Progress
from statevault.errors import (
    CheckpointNotFoundError,
    CheckpointPermissionError,
    ChecksumMismatchError,
    CorruptFileError,
    HeaderError,
    StateVaultError,
    TruncatedFileError,
)
from statevault.fileformat import checksums
from statevault.fileformat.container import (
    PREFIX_BYTES,
    Header,
    header_length,
    header_text,
    parse_header_text,
)
from statevault.fileformat.metadata import signed_digest
from statevault.fileformat.table import TensorEntry

CHUNK_BYTES = 8 << 20  # unverified reads: large enough to amortise syscalls
# Verified reads hash each chunk right after reading it, while it is still in the core's L2
# (1 MiB per core here), so xxh3 does not re-read RAM. Smaller chunks pay more per-chunk
# Python and syscall overhead than they save: loading 1 GiB into a model, A/B in one
# process, the checksum cost was 20-30% at 512 KiB, 14-19% at 1 MiB, 24-30% at 8 MiB.
VERIFY_CHUNK_BYTES = 1 << 20
# Large tensors are copied into a staging buffer, hashed and written a chunk at a time, on
# the saving thread. Writing 1 GiB to tmpfs, CPU seconds (median of 6, loaded machine): hash
# and write from the tensor's memory 0.484; staged 0.520 (512 KiB), 0.506 (1 MiB), 0.519
# (2 MiB), 0.483 (4 MiB); staged with the writes on the writer thread 0.685 (2 MiB: the
# hand-offs cost more than they overlap on two busy cores).
WRITE_CHUNK_BYTES = 2 << 20
SMALL_WRITE_BYTES = 1 << 20  # tensors below this are gathered into one writev
SMALL_READ_BYTES = 1 << 20  # tensors below this are read in batches by one preadv
BATCH_BYTES = 8 << 20  # most bytes one batched read or write carries
MAX_IOV = min(1024, os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024)
MAX_THREADS = 8
# Large tensors: memcpy from an mmap of the file (True) or preadv (False); see copy_mapped.
READ_LARGE_WITH_MMAP = False
STAGING_BYTES = 64 << 20  # per pinned buffer when loading to a GPU
STAGING_BUFFERS = 2  # one being filled from the file while the other is copied to the device
TEMP_SUFFIX = temps.TEMP_SUFFIX
logger = logging.getLogger("statevault")


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


HUGE_PAGE_MIN_BYTES = 4 << 20
_MADV_HUGEPAGE = 14  # from <linux/mman.h>
_PAGE = 4096


@functools.cache
def _madvise() -> Callable[[int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    function.restype = ctypes.c_int
    return function


def advise_huge_pages(tensor: torch.Tensor) -> None:
    """Ask Linux to back a fresh, large CPU tensor with 2 MiB pages before it is filled.

    Writing fresh memory costs one page fault (and a kernel zeroing) per 4 KiB page; with
    transparent huge pages in "madvise" mode (a common default) that is 512x fewer faults.
    Measured here: filling a fresh 256 MiB tensor from the page cache 135 ms -> 31 ms
    (23 ms when already touched). Only a hint: where it is unsupported nothing changes.
    """
    nbytes = tensor.numel() * tensor.element_size()
    madvise = _madvise() if nbytes >= HUGE_PAGE_MIN_BYTES and tensor.device.type == "cpu" else None
    if madvise is None:
        return
    start = (tensor.data_ptr() + _PAGE - 1) & ~(_PAGE - 1)
    length = (tensor.data_ptr() + nbytes - start) & ~(_PAGE - 1)
    if madvise(start, length, _MADV_HUGEPAGE) != 0:
        logger.debug("madvise(MADV_HUGEPAGE) failed: errno %d", ctypes.get_errno())


def _write_all(fd: int, buffer: ByteBuffer) -> None:
    """Write one buffer whole (one ``writev`` seam for every data write, short writes resumed)."""
    _writev_all(fd, [buffer])


def _pwrite_all(fd: int, buffer: bytes | bytearray, offset: int) -> None:
    view = memoryview(buffer)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


DigestSink: TypeAlias = "Callable[[int, str], None]"  # (index in jobs, hex digest)
# where, into which contiguous CPU tensor, expected digest. The tensor, not a view of it: views
# cost ~400 bytes each, so they are made a batch at a time (8 MiB for 20,000 tensors otherwise).
ReadJob = tuple[TensorEntry, torch.Tensor, "str | None"]
PARALLEL_MIN_BYTES = 4 << 20  # below this, thread start-up costs more than it saves


class WriteJob(NamedTuple):
    """One tensor to write: where it goes and a function returning its CPU bytes.

    A NamedTuple, not a dataclass: one is built per tensor, and a frozen dataclass costs
    3x more to build (10 ms for 20,000 tensors).
    """

    entry: TensorEntry
    # A contiguous CPU tensor to write as is, or a function returning one on demand (for
    # tensors that need a copy first, so only one such copy exists at a time).
    source: torch.Tensor | Callable[[], torch.Tensor]


ByteBuffer: TypeAlias = "memoryview | ctypes.Array[ctypes.c_ubyte]"  # len() is its size in bytes


def _written_through(buffers: list[ByteBuffer], done: int) -> list[ByteBuffer]:
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


def _writev_all(fd: int, buffers: list[ByteBuffer]) -> None:
    """Write every buffer in order with as few syscalls as the kernel allows."""
    while buffers:
        buffers = _written_through(buffers, os.writev(fd, buffers))


WRITE_AHEAD = 3  # runs of small tensors handed to the writer thread and not yet written


class _WriteBehind:
    """Writes runs of buffers in order on one helper thread while the caller prepares more.

    The kernel's copy into the page cache runs with the GIL released, so it overlaps with
    the Python work of copying and hashing the next run: measured on 20,000 small tensors,
    save took 0.22 s with the writes inline and 0.19 s with them behind. At most
    ``WRITE_AHEAD`` runs wait, so the memory they keep alive stays bounded.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._pool: ThreadPoolExecutor | None = None  # started by the first write
        self._pending: deque[tuple[Future[None], list[Any]]] = deque()

    def __enter__(self) -> _WriteBehind:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:  # on error too: the fd must not close under a write
            self._pool.shutdown(wait=True)

    def write(self, buffers: list[ByteBuffer], keep_alive: list[Any]) -> None:
        """Queue ``buffers`` (views of ``keep_alive``'s memory) to be written after the rest."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="statevault-write")
        future = self._pool.submit(_writev_all, self._fd, buffers)
        self._pending.append((future, keep_alive))
        while len(self._pending) > WRITE_AHEAD:
            self._wait_oldest()

    def drain(self) -> None:
        """Wait until everything queued is written; raise the first write error."""
        while self._pending:
            self._wait_oldest()

    def _wait_oldest(self) -> None:
        future, keep_alive = self._pending.popleft()
        future.result()  # only then may ``keep_alive`` (copies made for this run) be freed
        del keep_alive


class _Staging:
    """One reused buffer that large tensors pass through a chunk at a time (made on first use)."""

    def __init__(self) -> None:
        self._memory: torch.Tensor | None = None
        self._view = memoryview(b"")

    def buffer(self) -> tuple[int, memoryview]:
        """The buffer's address and a byte view of it, ``WRITE_CHUNK_BYTES`` long."""
        if self._memory is None:
            self._memory = torch.empty(WRITE_CHUNK_BYTES, dtype=torch.uint8)
            self._view = tensor_memory(self._memory)
        return self._memory.data_ptr(), self._view


def plan_write_runs(sizes: Sequence[int]) -> list[range]:
    """Cut tensors (their byte sizes, in file order) into runs written by one call each.

    A tensor of ``SMALL_WRITE_BYTES`` or more is a run of its own; smaller ones that follow
    each other are gathered until the run holds ``SMALL_WRITE_BYTES`` or ``MAX_IOV`` of them.
    """
    runs: list[range] = []
    first = run_bytes = 0
    for index, size in enumerate(sizes):
        if size >= SMALL_WRITE_BYTES:
            if first < index:
                runs.append(range(first, index))
            runs.append(range(index, index + 1))
            first, run_bytes = index + 1, 0
            continue
        run_bytes += size
        if run_bytes >= SMALL_WRITE_BYTES or index + 1 - first >= MAX_IOV:
            runs.append(range(first, index + 1))
            first, run_bytes = index + 1, 0
    if first < len(sizes):
        runs.append(range(first, len(sizes)))
    return runs


def _cpu_tensor(job: WriteJob) -> torch.Tensor:
    tensor = job.source if isinstance(job.source, torch.Tensor) else job.source()
    if tensor.nbytes != job.entry.nbytes:
        raise StateVaultError(f"tensor {job.entry.name!r} changed size while being saved")
    return tensor


def _write_small(
    behind: _WriteBehind, jobs: Sequence[WriteJob], run: range, record: DigestSink | None
) -> None:
    """Queue a run of small tensors as one write; with ``record``, hash what is written.

    Hashed runs are first gathered into one buffer (a single ``bytes.join``, the cheapest
    copy from Python: half the cost of a ``memmove`` per tensor) and each tensor is hashed
    there, so each digest covers the very bytes the file gets. Unhashed runs are written
    straight from the tensors' memory by one gathered ``writev``.
    """
    tensors = [_cpu_tensor(jobs[index]) for index in run]
    buffers: list[ByteBuffer] = [tensor_memory(tensor) for tensor in tensors if tensor.nbytes]
    if record is None:
        if buffers:
            behind.write(buffers, tensors)
        return
    gathered = memoryview(b"".join(buffers))  # the tensors may change or go from here on
    at = 0
    for index, tensor in zip(run, tensors, strict=True):
        size = tensor.nbytes
        record(index, checksums.digest(gathered[at : at + size]))
        at += size
    if buffers:
        behind.write([gathered], [])


def _write_large(
    fd: int,
    staging: _Staging,
    job: WriteJob,
    index: int,
    record: DigestSink | None,
    progress: Progress | None,
) -> None:
    """Write a large tensor in chunks; with ``record``, hash each chunk as it is written.

    A tensor of the caller's is copied a chunk at a time into the staging buffer, hashed
    there (in cache) and written from there, so another thread changing it meanwhile
    cannot make the digest disagree with the file. A copy made for us (``source`` is a
    function) is ours alone: it is hashed and written from its own memory. Inline, on
    this thread: handing 2 MiB chunks to the writer thread cost more than it overlapped
    (module comment at ``WRITE_CHUNK_BYTES``).
    """
    tensor = _cpu_tensor(job)  # held here: ``view`` does not keep a copy made for us alive
    hasher = checksums.new_hasher() if record is not None else None
    copy = hasher is not None and isinstance(job.source, torch.Tensor)  # the caller's memory
    stage, stage_view = staging.buffer() if copy else (0, None)
    view = tensor_memory(tensor)
    for start in range(0, len(view), WRITE_CHUNK_BYTES):
        chunk = view[start : start + WRITE_CHUNK_BYTES]
        if stage_view is not None:
            ctypes.memmove(stage, tensor.data_ptr() + start, len(chunk))
            chunk = stage_view[: len(chunk)]
        if hasher is not None:
            hasher.update(chunk)
        _write_all(fd, chunk)
        if progress is not None:
            progress.advance(len(chunk))
    if record is not None and hasher is not None:
        record(index, hasher.hexdigest())


def _write_data(
    fd: int, jobs: Sequence[WriteJob], record: DigestSink | None, progress: Progress | None
) -> None:
    """Write every tensor in file order, hashing (with ``record``) exactly what is written.

    Runs of small tensors are gathered into one write each, so a state of 20,000 small
    tensors costs ~200 syscalls, not 20,000, and those writes run on a writer thread behind
    the copying and hashing of the next run. Large tensors go in chunks. When hashing,
    the caller's bytes are copied first (a run of small tensors into one gathered buffer, a
    large tensor's chunk into a reused staging buffer) and hashed and written from the
    copy: a tensor changed in place during the save then leaves a file that holds, per copy,
    the bytes as they were copied, with digests that match them. Tensors that need a copy
    first anyway (``source`` is a function) are copied one at a time (a run at a time if
    small) and not copied again.
    """
    staging = _Staging()
    with _WriteBehind(fd) as behind:
        for run in plan_write_runs([job.entry.nbytes for job in jobs]):
            if len(run) == 1 and jobs[run[0]].entry.nbytes >= SMALL_WRITE_BYTES:
                behind.drain()  # the file offset must be past every earlier tensor
                _write_large(fd, staging, jobs[run[0]], run[0], record, progress)
            else:
                _write_small(behind, jobs, run, record)
                if progress is not None:  # queued: at most WRITE_AHEAD runs behind the disk
                    progress.advance(sum(jobs[index].entry.nbytes for index in run))
        behind.drain()


class HeaderToFill(Protocol):
    """A header encoded before the data, with its tensor digests filled in while writing."""

    size: int  # its length in bytes: the data section starts right after it

    def put(self, index: int, digest: str) -> None:
        """Record the digest of ``jobs[index]``'s bytes."""

    def finish(self) -> bytes | bytearray:
        """The complete header, once every digest has been put."""


def write_atomically(
    path: str | os.PathLike[str],
    jobs: Sequence[WriteJob],
    header: HeaderToFill,
    *,
    checksum: bool,
    fsync: bool,
    progress: Progress | None = None,
) -> None:
    """Write a checkpoint to ``path`` so that readers only ever see the old or the new file.

    The data is written and hashed in one pass after ``header.size`` bytes; the header,
    whose length does not depend on the digests (fixed-width hex), is written last. The
    file ``path`` names (through symlinks) is replaced by a rename in its own directory and
    keeps its mode (``_target``); temporaries of killed saves there are removed first
    (``_temps``). OS errors become ``CheckpointWriteError`` naming ``path``.
    """
    target = _target.resolve(path)  # refuses what must not be replaced, before writing
    directory = target.file.parent
    temps.remove_stale_temporaries(directory)  # before writing: they may be what fills it
    temp_path = directory / temps.temp_name(target.file.name)
    try:
        # 0o666 filtered by the umask, like any normally created file; O_EXCL never clobbers.
        fd = os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        raise _target.write_error(target.given, exc, directory) from exc
    try:
        if progress is not None:
            progress.start(sum(job.entry.nbytes for job in jobs))
        write_file(
            fd,
            jobs,
            header,
            checksum=checksum,
            fsync=fsync,
            progress=progress,
            existing=target.existing,
        )
        os.replace(temp_path, target.file)
    except BaseException as exc:
        temp_path.unlink(missing_ok=True)
        if _from_the_os(exc):
            raise _target.write_error(target.given, exc, directory) from exc
        raise
    if fsync:
        try:
            _fsync_directory(directory)
        except OSError as exc:
            raise _target.write_error(target.given, exc, directory, replaced=True) from exc


def write_file(
    fd: int,
    jobs: Sequence[WriteJob],
    header: HeaderToFill,
    *,
    checksum: bool,
    fsync: bool,
    progress: Progress | None = None,
    existing: os.stat_result | None = None,
) -> bytes | bytearray:
    """Write a whole checkpoint into the new file ``fd`` and close it; return its header.

    The data is written and hashed in one pass after ``header.size`` bytes, then the
    header; ``existing`` is the status of the file it will replace (mode kept). The
    caller renames it into place (``write_atomically``, or a sharded save's commit).
    """
    try:
        os.lseek(fd, header.size, os.SEEK_SET)
        _write_data(fd, jobs, header.put if checksum else None, progress)
        complete = header.finish()
        if len(complete) != header.size:
            raise StateVaultError("internal error: header length changed after hashing")
        _pwrite_all(fd, complete, 0)
        if existing is not None:
            _target.keep_attributes(fd, existing)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    return complete


def _from_the_os(exc: BaseException) -> TypeGuard[OSError]:
    """An OS error of a system call (it has an errno), not one of ours or of caller code.

    OSErrors without an errno come from Python code (a tensor source, a monkeypatch) and
    are passed on unchanged, as are statevault's own errors.
    """
    return (
        isinstance(exc, OSError) and exc.errno is not None and not isinstance(exc, StateVaultError)
    )


_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def open_regular(path: Path) -> tuple[int, os.stat_result]:
    """A read-only descriptor of ``path`` and its status, refusing anything but a regular file.

    The open itself must not block: a named pipe blocks ``open`` until a writer appears
    and then ``read`` until it writes, which hangs load/inspect/verify forever. O_NONBLOCK
    makes that open return at once; the kind is then checked on the open descriptor (not
    on the path, which could be swapped in between) and the flag cleared for ordinary reads.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise CheckpointNotFoundError(f"{path}: no such checkpoint file") from None
    except IsADirectoryError:
        raise CheckpointNotFoundError(f"{path}: is a directory, not a checkpoint file") from None
    except PermissionError as exc:  # still a PermissionError for callers that catch that
        raise CheckpointPermissionError(
            f"{path}: cannot be read by this process ({exc.strerror}); check the permissions "
            "of the file and of the directories above it (read access to the file is needed)",
            exc.errno,
        ) from exc
    except OSError as exc:  # a symlink loop, a name too long, a file where a folder should be
        raise CheckpointNotFoundError(
            f"{path}: cannot be opened as a checkpoint file ({exc.strerror})"
        ) from exc
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            what = next((name for test, name in _FILE_KINDS if test(status.st_mode)), "not a file")
            raise CheckpointNotFoundError(
                f"{path}: is {what}, not a regular file; statevault reads checkpoints only from "
                "regular files (copy the data into a file first)"
            )
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, status


def read_regular(path: Path, *, limit: int) -> bytes:
    """The whole of a small regular file (an index), refusing other kinds and files over
    ``limit`` bytes before reading any of it."""
    fd, status = open_regular(path)
    try:
        if status.st_size > limit:
            raise HeaderError(
                f"{path}: is {status.st_size} bytes, above the {limit} byte limit for this kind "
                "of file; it is damaged or not what its name says"
            )
        parts = []
        size = 0
        while size <= limit:
            part = os.read(fd, limit + 1 - size)
            if not part:
                break
            parts.append(part)
            size += len(part)
        if size > limit:  # grew while being read
            raise HeaderError(f"{path}: grew past the {limit} byte limit while being read")
        return b"".join(parts)
    except OSError as exc:
        raise CorruptFileError(f"{path}: could not be read ({exc.strerror})") from exc
    finally:
        os.close(fd)


class FileReader:
    """An open checkpoint file: its validated header and verified reads of its tensors."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd, status = open_regular(self.path)
        self._map: mmap.mmap | None = None
        self._map_anchor: ctypes.c_char | None = None  # exports the mapping's address
        try:
            self.file_size = status.st_size
            prefix = os.pread(self._fd, PREFIX_BYTES + 1, 0)
            length = header_length(prefix, file_size=self.file_size, source=str(self.path))
            raw = os.pread(self._fd, length, PREFIX_BYTES)
            if len(raw) != length:
                raise TruncatedFileError(
                    f"{self.path}: file shrank while its header was read (read {len(raw)} of "
                    f"{length} bytes); it is being rewritten in place or was truncated"
                )
            # hashed before parsing: a format-2 header's digest covers its raw bytes
            self.signed_digest = signed_digest(prefix[:PREFIX_BYTES], raw)
            text = header_text(raw, source=str(self.path))
            del raw  # megabytes for 20,000 tensors: parse with one copy alive, not two
            self.header: Header = parse_header_text(
                text, header_bytes=length, file_size=self.file_size, source=str(self.path)
            )
            del text
        except OSError as exc:
            os.close(self._fd)
            raise CorruptFileError(f"{self.path}: could not be read ({exc.strerror})") from exc
        except BaseException:
            os.close(self._fd)
            raise

    def fileno(self) -> int:
        """The open descriptor, for whole-file scans that read with their own buffers."""
        return self._fd

    def close(self) -> None:
        self._unmap()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> FileReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read_into(self, entry: TensorEntry, dest: memoryview, expected: str | None) -> None:
        """Fill ``dest`` with the tensor's bytes, checking ``expected`` digest when given."""
        hasher = checksums.new_hasher() if expected is not None else None
        step = CHUNK_BYTES if hasher is None else VERIFY_CHUNK_BYTES
        base = self.header.data_offset + entry.start
        done = 0
        while done < entry.nbytes:
            chunk = dest[done : min(done + step, entry.nbytes)]
            got = os.preadv(self._fd, [chunk], base + done)
            if got <= 0:
                raise self._truncated(entry, done)
            if hasher is not None:
                hasher.update(chunk[:got])
            done += got
        if hasher is not None:
            self._check(entry, expected, hasher.hexdigest())

    def _mapped_address(self) -> int:
        """Base address of a private read mapping of the whole file (created once)."""
        if self._map is None:
            size = os.fstat(self._fd).st_size
            if size != self.file_size:  # mapping a shrunk file would SIGBUS instead of raising
                raise TruncatedFileError(
                    f"{self.path}: file changed size from {self.file_size} to {size} bytes "
                    "while open; it is being rewritten in place or was truncated"
                )
            # ACCESS_COPY (MAP_PRIVATE) only so ctypes can take its address; we never write.
            self._map = mmap.mmap(self._fd, 0, access=mmap.ACCESS_COPY)
            self._map_anchor = ctypes.c_char.from_buffer(self._map)
        return ctypes.addressof(self._map_anchor)  # type: ignore[arg-type]

    def _unmap(self) -> None:
        if self._map is not None:
            self._map_anchor = None  # drop the exported pointer before closing the map
            self._map.close()
            self._map = None

    def copy_mapped(self, entry: TensorEntry, dest: memoryview, expected: str | None) -> None:
        """Like ``read_into``, but memcpy from a mapping of the file (GIL released).

        Kept as the measured alternative to ``preadv`` (``READ_LARGE_WITH_MMAP``): a
        user-space copy from mapped page cache can outrun the kernel's copy to user memory,
        but in A/B runs here it gained nothing, so ``preadv`` is the default (README,
        Performance). Each chunk is hashed right after it lands in ``dest``, still in L2.
        """
        source = self._mapped_address() + self.header.data_offset + entry.start
        target = ctypes.addressof(ctypes.c_char.from_buffer(dest)) if len(dest) else 0
        hasher = checksums.new_hasher() if expected is not None else None
        step = CHUNK_BYTES if hasher is None else VERIFY_CHUNK_BYTES
        for done in range(0, entry.nbytes, step):
            size = min(step, entry.nbytes - done)
            ctypes.memmove(target + done, source + done, size)
            if hasher is not None:
                hasher.update(dest[done : done + size])
        if hasher is not None:
            self._check(entry, expected, hasher.hexdigest())

    def _truncated(self, entry: TensorEntry, done: int) -> TruncatedFileError:
        return TruncatedFileError(
            f"{self.path}: tensor {entry.name!r} ends early: read {done} of {entry.nbytes} "
            "bytes (the file shrank while being read or is truncated)"
        )

    def _check(self, entry: TensorEntry, expected: str | None, found: str) -> None:
        if found != expected:
            raise ChecksumMismatchError(
                f"{self.path}: tensor {entry.name!r} is damaged: checksum expected "
                f"{checksums.ALGORITHM} {expected}, found {found}. Restore the file from a good "
                "copy; load(..., verify=False) reads the damaged bytes anyway"
            )

    def read_batch(self, batch: Sequence[ReadJob]) -> None:
        """Read tensors that lie back to back in the file with one scatter read, then verify.

        ``preadv`` fills every destination straight from the page cache in one syscall; the
        bytes are hashed right after, while the batch (at most ``BATCH_BYTES``) is in cache.
        """
        memory = [tensor_memory(dest) if dest.nbytes else b"" for _, dest, _ in batch]
        views: list[ByteBuffer] = [view for view in memory if not isinstance(view, bytes)]
        offset = self.header.data_offset + batch[0][0].start
        total = sum(len(view) for view in views)
        done = 0
        while views:
            got = os.preadv(self._fd, views, offset + done)
            if got <= 0:
                lost = next(e for e, _, _ in batch if e.end - batch[0][0].start > done)
                raise self._truncated(lost, max(0, done - (lost.start - batch[0][0].start)))
            done += got
            views = _written_through(views, got)
        if done != total:  # unreachable by construction; a cheap guard for future edits
            raise StateVaultError("internal error: batched read size mismatch")
        for (entry, _, expected), view in zip(batch, memory, strict=True):
            if expected is not None:
                self._check(entry, expected, checksums.digest(view))

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
        """
        table = self.header.entries
        limit = VERIFY_CHUNK_BYTES if digests else BATCH_BYTES
        tasks: list[tuple[int, Callable[[], None]]] = []
        for first, end, nbytes in plan_reads(table.starts, table.ends, dests, limit=limit):
            tasks.append((nbytes, partial(self._read_rows, first, end, dests, digests)))
        tasks.sort(key=lambda task: -task[0])
        if READ_LARGE_WITH_MMAP and any(size >= SMALL_READ_BYTES for size, _ in tasks):
            self._mapped_address()  # map once, before any thread needs it
        total = sum(size for size, _ in tasks)
        threads = min(len(tasks), os.cpu_count() or 1, MAX_THREADS)
        if threads <= 1 or total < PARALLEL_MIN_BYTES:
            for _, task in tasks:
                task()
            return
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="statevault-read") as pool:
            for future in [pool.submit(task) for _, task in tasks]:
                future.result()

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
        if len(jobs) == 1 and jobs[0][0].nbytes >= SMALL_READ_BYTES:
            entry, dest, expected = jobs[0]
            big = self.copy_mapped if READ_LARGE_WITH_MMAP else self.read_into
            big(entry, tensor_memory(dest), expected)
        else:
            self.read_batch(jobs)

    def read_to_device(
        self,
        jobs: Sequence[tuple[TensorEntry, torch.Tensor, str | None]],
        *,
        staging_bytes: int = STAGING_BYTES,
        buffers: int = STAGING_BUFFERS,
    ) -> None:
        """Read tensors into (GPU) device memory through a few pinned host buffers.

        The file is streamed in order through ``buffers`` staging buffers of
        ``staging_bytes`` each (bounded host memory, whatever the model size). While the
        copy engine moves buffer *k* to the device on a side stream, the CPU reads and
        hashes buffer *k+1*; a buffer is refilled only after its copy's event completes.
        Small tensors that lie back to back share one buffer fill. On a CPU destination
        the same pipeline runs with plain buffers and synchronous copies (which is how it
        is tested without a GPU).
        """
        if not jobs:
            return
        device = jobs[0][1].device
        cuda = device.type == "cuda"
        staging = [
            torch.empty(staging_bytes, dtype=torch.uint8, pin_memory=cuda) for _ in range(buffers)
        ]
        views = [tensor_memory(buffer) for buffer in staging]
        stream = torch.cuda.Stream(device) if cuda else None  # type: ignore[no-untyped-call]
        pending: list[Any] = [None] * buffers  # the event of each buffer's last copy
        hashers: dict[str, Any] = {}
        for number, fill in enumerate(plan_staging(jobs, staging_bytes)):
            slot = number % buffers
            if pending[slot] is not None:
                pending[slot].synchronize()
            view = views[slot]
            first_entry, first_start = fill[0][0], fill[0][1]
            length = sum(piece[2] for piece in fill)
            self._pread_full(view[:length], first_entry, first_start)
            at = 0
            for entry, start, size, dest, expected in fill:
                chunk = view[at : at + size]
                if expected is not None:
                    hasher = hashers.setdefault(entry.name, checksums.new_hasher())
                    hasher.update(chunk)
                    if start + size == entry.nbytes:
                        self._check(entry, expected, hashers.pop(entry.name).hexdigest())
                target = dest.detach().reshape(-1).view(torch.uint8)[start : start + size]
                source = staging[slot][at : at + size]
                if stream is not None:
                    with torch.cuda.stream(stream):
                        target.copy_(source, non_blocking=True)
                else:
                    target.copy_(source)
                at += size
            if stream is not None:
                event = torch.cuda.Event()  # type: ignore[no-untyped-call]
                event.record(stream)
                pending[slot] = event
        if stream is not None:
            stream.synchronize()  # the caller may use the tensors on any stream right away

    def stream(
        self, entry: TensorEntry, *, chunk_bytes: int, expected: str | None
    ) -> Iterator[bytearray]:
        """The tensor's bytes in fresh buffers of at most ``chunk_bytes``, checked at the end.

        For consumers that look at a tensor piece by piece (verify, diff) and must keep
        memory bounded whatever the tensor's size.
        """
        hasher = checksums.new_hasher() if expected is not None else None
        for start in range(0, entry.nbytes, max(1, chunk_bytes)):
            buffer = bytearray(min(chunk_bytes, entry.nbytes - start))
            self._pread_full(memoryview(buffer), entry, start)
            if hasher is not None:
                hasher.update(buffer)
            yield buffer
        if hasher is not None:
            self._check(entry, expected, hasher.hexdigest())

    def _pread_full(self, view: memoryview, entry: TensorEntry, start: int) -> None:
        offset = self.header.data_offset + entry.start + start
        done = 0
        while done < len(view):
            got = os.preadv(self._fd, [view[done:]], offset + done)
            if got <= 0:
                raise self._truncated(entry, start + done)
            done += got


def plan_staging(
    jobs: Sequence[tuple[TensorEntry, torch.Tensor, str | None]], staging_bytes: int
) -> list[list[tuple[TensorEntry, int, int, torch.Tensor, str | None]]]:
    """Cut tensors (in file order) into staging-buffer fills of ``(entry, start, size, ...)``.

    A fill is one contiguous range of the file, at most ``staging_bytes`` long: a slice of
    a large tensor, or several small tensors that lie back to back.
    """
    fills: list[list[tuple[TensorEntry, int, int, torch.Tensor, str | None]]] = []
    current: list[tuple[TensorEntry, int, int, torch.Tensor, str | None]] = []
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


def plan_reads(
    starts: Sequence[int], ends: Sequence[int], wanted: Sequence[object], *, limit: int
) -> Iterator[tuple[int, int, int]]:
    """The read tasks for the rows whose ``wanted`` entry is not None, in file order.

    Yields ``(first_row, end_row, nbytes)``: one large tensor alone, or a run of small
    tensors back to back in the file, at most ``limit`` bytes (but at least one tensor) and
    ``MAX_IOV`` tensors. Rows follow each other in the file, so a run is a range of rows.
    """
    first, size = -1, 0
    for row, item in enumerate(wanted):
        nbytes = ends[row] - starts[row]
        if first >= 0 and (
            item is None
            or nbytes >= SMALL_READ_BYTES
            or size + nbytes > limit
            or row - first >= MAX_IOV
        ):
            yield first, row, size
            first = -1
        if item is None:
            continue
        if nbytes >= SMALL_READ_BYTES:
            yield row, row + 1, nbytes
            continue
        if first < 0:
            first, size = row, 0
        size += nbytes
    if first >= 0:
        yield first, len(wanted), size
