"""The CRC-32 of every entry of a torch zip file (``torch.save`` since 1.6), streamed.

A ``.pt`` zip records a CRC-32 per entry (``data.pkl``, each tensor storage ``data/N``, ...):
that is what ``verify`` can check on such a file. The check agrees with stdlib ``zipfile``
(which raises ``BadZipFile`` on a mismatch) but reads each stored entry with ``pread`` into one
small buffer and reports the CRC it found, so memory stays flat and several entries are
checked at once (``zlib.crc32`` releases the GIL). Compressed entries, which torch does not
write, go through ``zipfile`` itself. May be imported by: ``statevault.tools.verification``.
"""

from __future__ import annotations

import os
import struct
import threading
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from statevault.engine.progress import Progress
from statevault.engine.scan import default_threads, run_parallel
from statevault.engine.verified import pread_exact
from statevault.errors import CorruptFileError, TruncatedFileError

CHUNK_BYTES = 1 << 20
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, ..., name length, extra length
_LOCAL_SIGNATURE = b"PK\x03\x04"


@dataclass(frozen=True)
class BadEntry:
    """A zip entry whose bytes do not match the CRC-32 recorded for it."""

    name: str
    expected: str
    found: str  # hex CRC found, or what is wrong with the entry


@dataclass(frozen=True)
class ZipCheck:
    entries: int
    nbytes: int
    bad: tuple[BadEntry, ...]
    recorded: bool  # False: the writer left every CRC at 0 (nothing to check)


def _crc_hex(value: int) -> str:
    return f"{value:08x}"


class _Checker:
    def __init__(self, path: Path, fd: int, archive: zipfile.ZipFile, progress: Progress | None):
        self.path, self.fd, self.archive, self.progress = path, fd, archive, progress
        self.lock = threading.Lock()  # zipfile's own reads share one file object

    def check(self, info: zipfile.ZipInfo, stop: threading.Event) -> BadEntry | None:
        expected = _crc_hex(info.CRC)
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
            return self._through_zipfile(info, expected)
        head = bytearray(_LOCAL_HEADER.size)
        pread_exact(self.fd, memoryview(head), info.header_offset, self._short(info))
        signature, name_length, extra_length = _LOCAL_HEADER.unpack(head)
        if signature != _LOCAL_SIGNATURE:
            return BadEntry(info.filename, expected, "its local header is damaged")
        start = info.header_offset + _LOCAL_HEADER.size + name_length + extra_length
        view = memoryview(bytearray(min(CHUNK_BYTES, max(1, info.file_size))))
        crc = 0
        for done in range(0, info.file_size, len(view)):
            if stop.is_set():
                return None
            piece = view[: min(len(view), info.file_size - done)]
            pread_exact(self.fd, piece, start + done, self._short(info))
            crc = zlib.crc32(piece, crc)
            if self.progress is not None:
                self.progress.advance(len(piece))
        return None if crc == info.CRC else BadEntry(info.filename, expected, _crc_hex(crc))

    def _through_zipfile(self, info: zipfile.ZipInfo, expected: str) -> BadEntry | None:
        try:
            with self.lock, self.archive.open(info) as entry:
                while chunk := entry.read(CHUNK_BYTES):
                    if self.progress is not None:
                        self.progress.advance(len(chunk))
        except (zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError) as exc:
            return BadEntry(info.filename, expected, f"unreadable ({exc})")
        return None

    def _short(self, info: zipfile.ZipInfo) -> Callable[[int], Exception]:
        def error(done: int) -> Exception:
            return TruncatedFileError(
                f"{self.path}: zip entry {info.filename!r} ends past the end of the file; "
                "the file is truncated"
            )

        return error


def check_zip(
    path: Path, *, progress: Progress | None = None, threads: int | None = None
) -> ZipCheck:
    """Check every entry's CRC-32; raises :class:`CorruptFileError` if the zip is unreadable."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CorruptFileError(
            f"{path}: starts like a torch zip file but its zip directory is unreadable ({exc}); "
            "the file is damaged or truncated"
        ) from exc
    with archive:
        infos = archive.infolist()
        total = sum(info.file_size for info in infos)
        if progress is not None:
            progress.start(total)
        recorded = any(info.CRC != 0 for info in infos if info.file_size)
        if not recorded:
            return ZipCheck(len(infos), 0, (), recorded=False)
        fd = os.open(path, os.O_RDONLY)
        try:
            checker = _Checker(path, fd, archive, progress)
            ordered = sorted(infos, key=lambda info: -info.file_size)  # big first: busy threads
            found = run_parallel(
                [partial(checker.check, info) for info in ordered],
                threads or default_threads(),
            )
        finally:
            os.close(fd)
    position = {info.filename: i for i, info in enumerate(infos)}
    bad = sorted((entry for entry in found if entry is not None), key=lambda e: position[e.name])
    return ZipCheck(len(infos), total, tuple(bad), recorded=True)
