"""The header digest of format-1 files, which statevault wrote before format 2.

Format 1 hashed a canonical JSON document rebuilt from the parsed header (tensor table,
user metadata and our metadata with sorted keys), so checking it meant parsing the whole
nested-state tree and re-encoding every tensor entry: for 20,000 tensors ~13 MiB of Python
objects and ~45 ms. Format 2 hashes the header's bytes instead (``metadata``). Files of format 1
stay readable, so this digest stays, used only to check them.

May import: ``fileformat.checksums``, ``container``, ``table``. Imported by: ``metadata`` only
(and tests that build format-1 headers).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from statevault.fileformat import checksums
from statevault.fileformat.container import tensor_table_pieces
from statevault.fileformat.table import TensorEntry


def _canonical_tensor_pieces(entries: list[TensorEntry]) -> Iterator[str]:
    """The canonical tensor table (sorted by name), a chunk of entries per piece."""
    ordered = sorted(entries, key=lambda e: e.name)
    yield "{"
    for index, piece in enumerate(tensor_table_pieces(ordered, canonical=True)):
        yield ("," if index else "") + piece
    yield "}"


def _digest_parts(
    entries: list[TensorEntry], user: Mapping[str, str], body: Mapping[str, Any]
) -> Iterator[str]:
    yield '{"metadata":' + checksums.canonical_json(dict(user)) + ',"statevault":{'
    for position, (key, value) in enumerate(sorted(body.items())):
        yield ("," if position else "") + checksums.canonical_json(key) + ":"
        yield checksums.canonical_json(value)
    yield '},"tensors":'
    yield from _canonical_tensor_pieces(entries)
    yield "}"


def header_digest(
    entries: list[TensorEntry], user: Mapping[str, str], body: Mapping[str, Any]
) -> str:
    """Digest over every header field that matters, in a canonical form.

    Equal to the xxh3 of ``canonical_json({"tensors": ..., "metadata": ..., "statevault":
    body})``, hashed a member or a chunk of tensors at a time.
    """
    hasher = checksums.new_hasher()
    for part in _digest_parts(entries, user, body):
        hasher.update(part.encode("utf-8"))
    return str(hasher.hexdigest())
