"""Tensor checksums: XXH3-64 via the ``xxhash`` library.

XXH3 runs at memory speed and the binding releases the GIL, so hashing overlaps with I/O in
our reader threads. It detects accidental damage (truncation, bit flips, torn writes); it is
not a cryptographic signature and does not defend against a deliberate forger.

May import: nothing of statevault (``xxhash`` only). Imported by: ``metadata``, ``format1``
and the engine (data digests, the hashing loop), readers and tools.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import xxhash

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

ALGORITHM = "xxh3-64"
DIGEST_CHARS = 16  # hex characters; fixed, so a header's length is known before hashing
PLACEHOLDER = "0" * DIGEST_CHARS


def new_hasher(block_bytes: int | None = None) -> Any:
    """A streaming hasher with ``update(buffer)`` and ``hexdigest()``.

    ``block_bytes`` (format 3): the stream is cut into blocks of that size and the digest is
    every block's digest, concatenated; a stream of at most one block gets the same digest
    as without blocks.
    """
    return xxhash.xxh3_64() if block_bytes is None else BlockHasher(block_bytes)


def digest(buffer: ReadableBuffer, block_bytes: int | None = None) -> str:
    """Hex digest of one buffer in a single call (per block with ``block_bytes``)."""
    if block_bytes is None:
        return xxhash.xxh3_64_hexdigest(buffer)
    view = memoryview(buffer).cast("B")
    if len(view) <= block_bytes:
        return xxhash.xxh3_64_hexdigest(view)
    return "".join(
        xxhash.xxh3_64_hexdigest(view[at : at + block_bytes])
        for at in range(0, len(view), block_bytes)
    )


def block_count(nbytes: int, block_bytes: int) -> int:
    """Digests a tensor of ``nbytes`` has in format 3: one per block, the last one short, and
    one for an empty tensor."""
    return max(1, -(-nbytes // block_bytes))


class BlockHasher:
    """Digests of consecutive ``block_bytes`` blocks of one stream, fed in pieces of any size.

    Format 3 records one digest per block so that any thread can check any block; a stream
    read in order (``stream``, ``diff``, device staging) is checked against all of them.
    """

    __slots__ = ("_block", "_digests", "_filled", "_hasher")

    def __init__(self, block_bytes: int) -> None:
        self._block = block_bytes
        self._hasher = xxhash.xxh3_64()
        self._filled = 0  # bytes of the current block hashed so far
        self._digests: list[str] = []

    def update(self, piece: ReadableBuffer) -> None:
        view = memoryview(piece).cast("B")
        while len(view):
            if self._filled == self._block:
                self._digests.append(self._hasher.hexdigest())
                self._hasher.reset()
                self._filled = 0
            take = min(len(view), self._block - self._filled)
            self._hasher.update(view[:take])
            self._filled += take
            view = view[take:]

    def hexdigest(self) -> str:
        return "".join([*self._digests, self._hasher.hexdigest()])


def canonical_json(value: Any) -> str:
    """The one serialisation we hash and store: sorted keys, no spaces, no NaN."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
