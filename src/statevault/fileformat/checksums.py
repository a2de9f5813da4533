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


def new_hasher() -> Any:
    """A streaming hasher with ``update(buffer)`` and ``hexdigest()``."""
    return xxhash.xxh3_64()


def digest(buffer: ReadableBuffer) -> str:
    """Hex digest of one buffer in a single call."""
    return xxhash.xxh3_64_hexdigest(buffer)


def canonical_json(value: Any) -> str:
    """The one serialisation we hash and store: sorted keys, no spaces, no NaN."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
