"""Reading a tensor's bytes and checking them against its recorded digest: the one loop.

Loads, device staging, ``verify`` and ``diff`` all read pieces of a tensor, hash each
piece while it is still in cache, and compare the digest after the last piece; they all
report a short read and a mismatch in the same words. Both live here, once. May import:
``fileformat.checksums``, ``statevault.errors``, the engine's ``memory`` and ``storage``.
Imported by the engine's reader, staging and scans.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial

from statevault.engine.memory import ByteBuffer
from statevault.engine.storage import StoredObject
from statevault.errors import ChecksumMismatchError, TruncatedFileError
from statevault.fileformat import checksums

ReadV = Callable[[list[ByteBuffer], int], int]  # (buffers, offset) -> bytes read, 0 at the end


def ended_early(source: object, name: str, done: int, nbytes: int) -> TruncatedFileError:
    """The error for tensor ``name`` of ``source`` when only ``done`` of its bytes are there."""
    return TruncatedFileError(
        f"{source}: tensor {name!r} ends early: read {done} of {nbytes} "
        "bytes (the file shrank while being read or is truncated)"
    )


def damaged(source: object, name: str, expected: str | None, found: str) -> ChecksumMismatchError:
    """The error for tensor ``name`` of ``source`` whose bytes hash to ``found``."""
    return ChecksumMismatchError(
        f"{source}: tensor {name!r} is damaged: checksum expected "
        f"{checksums.ALGORITHM} {expected}, found {found}. Restore the file from a good "
        "copy; load(..., verify=False) reads the damaged bytes anyway"
    )


def check_bytes(source: object, name: str, expected: str | None, data: ByteBuffer | bytes) -> None:
    """Raise :func:`damaged` unless ``data``, one whole tensor read at once, has ``expected``."""
    if expected is not None:
        found = checksums.digest(data)
        if found != expected:
            raise damaged(source, name, expected, found)


def read_exact(
    readv: ReadV, view: memoryview, offset: int, on_short: Callable[[int], Exception]
) -> None:
    """Fill ``view`` from ``offset``; ``on_short(bytes read)`` is raised if the data ends."""
    done = 0
    while done < len(view):
        got = readv([view[done:]], offset + done)
        if got <= 0:
            raise on_short(done)
        done += got


def pread_exact(
    fd: int, view: memoryview, offset: int, on_short: Callable[[int], Exception]
) -> None:
    """:func:`read_exact` from a file descriptor."""
    read_exact(partial(os.preadv, fd), view, offset, on_short)


class TensorBytes:
    """One tensor of an open object, read in pieces, hashed as they arrive, checked at the end.

    ``expected`` None reads without hashing, unless ``always_hash`` (a scan that reports
    what it found rather than raising). Pieces must come in order; ``hash`` takes pieces a
    batched read already brought in.
    """

    __slots__ = ("_base", "_file", "_hasher", "expected", "name", "nbytes")

    def __init__(
        self,
        file: StoredObject,
        base: int,
        name: str,
        nbytes: int,
        expected: str | None,
        *,
        always_hash: bool = False,
    ) -> None:
        self._file = file
        self._base = base  # where the tensor's first byte is in the object
        self.name = name
        self.nbytes = nbytes
        self.expected = expected
        hashing = expected is not None or always_hash
        self._hasher = checksums.new_hasher() if hashing else None

    def read(self, view: memoryview, at: int) -> None:
        """Fill ``view`` with the tensor's bytes from ``at`` and hash them."""
        read_exact(self._file.readv, view, self._base + at, partial(self._short, at))
        self.hash(view)

    def _short(self, at: int, done: int) -> Exception:
        return ended_early(self._file.name, self.name, at + done, self.nbytes)

    def hash(self, piece: ByteBuffer) -> None:
        if self._hasher is not None:
            self._hasher.update(piece)

    def mismatch(self) -> str | None:
        """After the last piece: the digest found if it is not the expected one, else None."""
        if self._hasher is None:
            return None
        found: str = self._hasher.hexdigest()
        return None if found == self.expected else found

    def check(self) -> None:
        """After the last piece: raise :func:`damaged` if the bytes are not what was saved."""
        found = self.mismatch()
        if found is not None:
            raise damaged(self._file.name, self.name, self.expected, found)
