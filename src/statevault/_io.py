"""The I/O engine: straight-from-memory atomic writes and parallel, verified reads.

Writes never touch the final path until the new file is complete: data goes to a temporary
file in the same directory, is fsynced, then renamed over the target, and the directory is
fsynced so the rename itself survives a power cut. A process killed at any moment leaves the
previous file intact (at worst a stray ``.NAME.*.svtmp`` file beside it).

Reads go straight into the destination tensor's memory with ``os.preadv`` (no intermediate
buffer, the GIL released), spread over a thread pool, each tensor hashed as its chunks arrive
while they are still in cache.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import stat
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from statevault import _checksum
from statevault._format import Header, TensorEntry, header_length, parse_header
from statevault.errors import (
    CheckpointNotFoundError,
    ChecksumMismatchError,
    StateVaultError,
    TruncatedFileError,
)

CHUNK_BYTES = 8 << 20  # large enough to amortise syscalls, small enough to hash in cache
SMALL_WRITE_BYTES = 1 << 20  # tensors below this are gathered into one buffer per write
TEMP_SUFFIX = ".svtmp"


def tensor_memory(tensor: torch.Tensor) -> memoryview:
    """A writable byte view of a contiguous CPU tensor's memory (keep the tensor alive)."""
    nbytes = tensor.numel() * tensor.element_size()
    if nbytes == 0:
        return memoryview(bytearray())
    array = (ctypes.c_ubyte * nbytes).from_address(tensor.data_ptr())
    return memoryview(array).cast("B")


def _write_all(fd: int, buffer: memoryview | bytes | bytearray) -> None:
    view = memoryview(buffer)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class WriteJob:
    """One tensor to write: where it goes and a function returning its CPU bytes."""

    entry: TensorEntry
    source: Callable[[], torch.Tensor]  # contiguous CPU tensor, materialised on demand


def _write_data(fd: int, jobs: Sequence[WriteJob], checksum: bool) -> dict[str, str]:
    digests: dict[str, str] = {}
    pending = bytearray()
    for job in jobs:
        tensor = job.source()
        view = tensor_memory(tensor)
        if len(view) != job.entry.nbytes:
            raise StateVaultError(f"tensor {job.entry.name!r} changed size while being saved")
        if len(view) < SMALL_WRITE_BYTES:
            if checksum:
                digests[job.entry.name] = _checksum.digest(view)
            pending += view
            if len(pending) >= SMALL_WRITE_BYTES:
                _write_all(fd, pending)
                pending.clear()
            continue
        if pending:
            _write_all(fd, pending)
            pending.clear()
        hasher = _checksum.new_hasher() if checksum else None
        for start in range(0, len(view), CHUNK_BYTES):
            chunk = view[start : start + CHUNK_BYTES]
            if hasher is not None:
                hasher.update(chunk)
            _write_all(fd, chunk)
        if hasher is not None:
            digests[job.entry.name] = hasher.hexdigest()
        del view, tensor
    if pending:
        _write_all(fd, pending)
    return digests


def write_atomically(
    path: Path,
    jobs: Sequence[WriteJob],
    build_header: Callable[[dict[str, str]], bytes],
    *,
    checksum: bool,
    fsync: bool,
) -> None:
    """Write a checkpoint to ``path`` so that readers only ever see the old or the new file.

    ``build_header`` receives the tensor digests and must return a header of the same length
    for any digests (they are fixed-width hex), so the data can be written and hashed in one
    pass and the header filled in last.
    """
    placeholder = build_header(
        {job.entry.name: _checksum.PLACEHOLDER for job in jobs} if checksum else {}
    )
    directory = path.parent
    if not directory.is_dir():
        raise CheckpointNotFoundError(
            f"{path}: directory {directory} does not exist; create it first"
        )
    temp_path = directory / f".{path.name}.{secrets.token_hex(6)}{TEMP_SUFFIX}"
    # 0o666 filtered by the umask, like any normally created file; O_EXCL never clobbers.
    fd = os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        os.lseek(fd, len(placeholder), os.SEEK_SET)
        digests = _write_data(fd, jobs, checksum)
        header = build_header(digests)
        if len(header) != len(placeholder):
            raise StateVaultError("internal error: header length changed after hashing")
        os.pwrite(fd, header, 0)
        if fsync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        temp_path.unlink(missing_ok=True)
        raise
    os.close(fd)
    try:
        os.replace(temp_path, path)
    except BaseException:
        temp_path.unlink(missing_ok=True)
        raise
    if fsync:
        _fsync_directory(directory)


class FileReader:
    """An open checkpoint file: its validated header and verified reads of its tensors."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self._fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            raise CheckpointNotFoundError(f"{self.path}: no such checkpoint file") from None
        except IsADirectoryError:
            raise CheckpointNotFoundError(
                f"{self.path}: is a directory, not a checkpoint file"
            ) from None
        try:
            status = os.fstat(self._fd)
            if stat.S_ISDIR(status.st_mode):  # Linux opens directories read-only without error
                raise CheckpointNotFoundError(f"{self.path}: is a directory, not a checkpoint file")
            self.file_size = status.st_size
            prefix = os.pread(self._fd, 8, 0)
            length = header_length(prefix, file_size=self.file_size, source=str(self.path))
            raw = os.pread(self._fd, length, 8)
            self.header: Header = parse_header(raw, file_size=self.file_size, source=str(self.path))
        except BaseException:
            os.close(self._fd)
            raise

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> FileReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read_into(self, entry: TensorEntry, dest: memoryview, expected: str | None) -> None:
        """Fill ``dest`` with the tensor's bytes, checking ``expected`` digest when given."""
        hasher = _checksum.new_hasher() if expected is not None else None
        base = self.header.data_offset + entry.start
        done = 0
        while done < entry.nbytes:
            chunk = dest[done : min(done + CHUNK_BYTES, entry.nbytes)]
            got = os.preadv(self._fd, [chunk], base + done)
            if got <= 0:
                raise TruncatedFileError(
                    f"{self.path}: tensor {entry.name!r} ends early: read {done} of {entry.nbytes} "
                    "bytes (the file shrank while being read or is truncated)"
                )
            if hasher is not None:
                hasher.update(chunk[:got])
            done += got
        if hasher is not None:
            found = hasher.hexdigest()
            if found != expected:
                raise ChecksumMismatchError(
                    f"{self.path}: tensor {entry.name!r} is damaged: checksum expected "
                    f"{_checksum.ALGORITHM} {expected}, found {found}. Restore the file from a good "
                    "copy; load(..., verify=False) reads the damaged bytes anyway"
                )

    def read_many(self, jobs: Iterable[tuple[TensorEntry, memoryview, str | None]]) -> None:
        """Run ``read_into`` for many tensors in parallel; the first failure is raised."""
        work = sorted(jobs, key=lambda job: -job[0].nbytes)  # big ones first balances threads
        if not work:
            return
        threads = min(len(work), os.cpu_count() or 1, 8)
        if threads == 1 or sum(job[0].nbytes for job in work) < (4 << 20):
            for job in work:
                self.read_into(*job)
            return
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="statevault-read") as pool:
            for future in [pool.submit(self.read_into, *job) for job in work]:
                future.result()
