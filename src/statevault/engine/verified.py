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
        f"{source}: tensor {name!r} ends early: the file ends before its byte {done} of "
        f"{nbytes} (the file shrank while being read or is truncated)"
    )


def damaged(
    source: object,
    name: str,
    expected: str | None,
    found: str,
    *,
    block_bytes: int | None = None,
    first_block: int = 0,
) -> ChecksumMismatchError:
    """The error for tensor ``name`` of ``source`` whose bytes hash to ``found``.

    ``block_bytes`` given (a tensor of several format-3 blocks; ``expected`` and ``found`` are
    joined digests, the first being block ``first_block``): the message names the first
    damaged block and its byte range.
    """
    chars, where = checksums.DIGEST_CHARS, ""
    if block_bytes is not None and expected is not None:
        bad = next(
            (
                at
                for at in range(0, len(found), chars)
                if found[at : at + chars] != expected[at : at + chars]
            ),
            0,
        )
        block = first_block + bad // chars
        where = f" in block {block} (bytes {block * block_bytes}-{(block + 1) * block_bytes - 1})"
        expected, found = expected[bad : bad + chars], found[bad : bad + chars]
    return ChecksumMismatchError(
        f"{source}: tensor {name!r} is damaged{where}: checksum expected "
        f"{checksums.ALGORITHM} {expected}, found {found}. Restore the file from a good "
        "copy; load(..., verify=False) reads the damaged bytes anyway"
    )


def check_bytes(
    source: object,
    name: str,
    expected: str | None,
    data: ByteBuffer | bytes,
    block_bytes: int | None = None,
) -> None:
    """Raise :func:`damaged` unless ``data``, one whole tensor read at once, has ``expected``."""
    if expected is not None:
        found = checksums.digest(data, block_bytes)
        if found != expected:
            several = block_bytes is not None and len(data) > block_bytes
            located = block_bytes if several else None
            raise damaged(source, name, expected, found, block_bytes=located)


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
    batched read already brought in. ``block_bytes``: the digests cover blocks of that size
    (format 3), ``expected`` being all of the tensor's, joined.
    """

    __slots__ = ("_base", "_block", "_file", "_hasher", "expected", "name", "nbytes")

    def __init__(
        self,
        file: StoredObject,
        base: int,
        name: str,
        nbytes: int,
        expected: str | None,
        *,
        always_hash: bool = False,
        block_bytes: int | None = None,
    ) -> None:
        self._file = file
        self._block = block_bytes
        self._base = base  # where the tensor's first byte is in the object
        self.name = name
        self.nbytes = nbytes
        self.expected = expected
        hashing = expected is not None or always_hash
        self._hasher = checksums.new_hasher(block_bytes) if hashing else None

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
            several = self._block is not None and self.nbytes > self._block
            located = self._block if several else None
            raise damaged(self._file.name, self.name, self.expected, found, block_bytes=located)


def read_blocks(
    file: StoredObject,
    base: int,
    name: str,
    nbytes: int,
    view: memoryview,
    at: int,
    expected: str | None,
    block_bytes: int | None,
    *,
    request_bytes: int,
) -> None:
    """Fill ``view`` with bytes ``at``.. of a tensor and check the blocks it covers.

    ``at`` is a block boundary and ``view`` ends at one or at the tensor's end, so the
    piece is checked on its own, whichever thread reads it (format 3). Reads go in requests
    of ``request_bytes``, each hashed as it lands. ``expected`` None reads unverified.
    """
    hasher = checksums.new_hasher(block_bytes) if expected is not None else None
    short = partial(_short_at, file.name, name, nbytes, at)
    for done in range(0, len(view), request_bytes):
        piece = view[done : done + request_bytes]
        read_exact(file.readv, piece, base + at + done, partial(_plus, short, done))
        if hasher is not None:
            hasher.update(piece)
    if hasher is None or block_bytes is None or expected is None:
        return
    chars, first = checksums.DIGEST_CHARS, at // block_bytes
    wanted = expected[
        first * chars : (first + checksums.block_count(len(view), block_bytes)) * chars
    ]
    found: str = hasher.hexdigest()
    if found != wanted:
        located = block_bytes if nbytes > block_bytes else None
        raise damaged(file.name, name, wanted, found, block_bytes=located, first_block=first)


def _short_at(source: object, name: str, nbytes: int, at: int, done: int) -> Exception:
    return ended_early(source, name, at + done, nbytes)


def _plus(short: Callable[[int], Exception], offset: int, done: int) -> Exception:
    return short(offset + done)
