"""statevault's own metadata, kept as JSON in the header's ``__metadata__``.

It records what safetensors cannot: the format version, the skeleton of nested state, true
dtypes of encoded tensors, tied-weight aliases, per-tensor checksums, and a digest of the
whole header so that damage to names, shapes or metadata is caught, not only to tensor data.
Plain safetensors files simply have none of this and load as flat state dicts.

Format 3, which ``save`` writes, lays the header out as (``<...>`` filled in)::

    {"__metadata__":{"statevault":"{\\"header_digest\\":\\"<16 hex>\\",\\"version\\":3,
      \\"aliases\\":{...},\\"dtypes\\":{...},\\"checksums\\":{\\"algorithm\\":\\"xxh3-64\\",
      \\"block_bytes\\":<B>,\\"packed\\":\\"<16 hex per block of each tensor, in data order>\\"}}",
      "statevault.tree":"<skeleton JSON>","format":"pt",<user metadata>},<tensor table>}

The header digest is the xxh3-64 of the file's first 8 + N bytes (length prefix and header)
with its own 16 characters read as zeros. It sits at a fixed offset, so checking it is one
hash over the header bytes, before and without any parsing. Digests are one string, not a
name -> digest table, and the skeleton is a string of its own that only ``load`` parses:
opening a 20,000-tensor file builds no per-tensor objects for either.

Format 3 differs from format 2 only in its checksums: each tensor has one digest per
``block_bytes`` block (the last one short; one for an empty tensor) instead of one for all
its bytes, so any thread can read and check any block of a large tensor, and a partial read
can check exactly the blocks it read. A tensor of at most one block has the same digest in
both. Format 2 files (one digest per tensor) and format 1 files (a canonical-JSON digest,
``_format1``) are still read.

May import: ``statevault.errors`` and the other ``fileformat`` modules. Imported by: readers
(decode) and saving (``SlottedHeader``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

from statevault.errors import HeaderError
from statevault.fileformat import checksums as _checksum
from statevault.fileformat import format1
from statevault.fileformat.container import (
    METADATA_KEY,
    Header,
    encode_header,
    first_metadata_value_at,
)
from statevault.fileformat.dtypes import dtype_from_name, spec_for
from statevault.fileformat.table import TensorEntry, TensorTable, brief
from statevault.fileformat.tree import Skeleton

VAULT_KEY = "statevault"
TREE_KEY = "statevault.tree"
FORMAT_KEY = "format"
FORMAT_VERSION = 3
# Format 3's block: large enough that a block is one deep disk request and hashing it
# costs one call, small enough that a 100 MiB tensor still splits over every core. Chosen
# by measurement (see docs/performance.md, "Block size"; bench/block_ab.py).
BLOCK_BYTES = 8 << 20
MAX_BLOCK_BYTES = 1 << 40  # a larger recorded block is damage, not a choice we ever make
RESERVED_KEYS = frozenset({VAULT_KEY, TREE_KEY})
# How every format-2 header begins; the header digest's 16 characters follow.
LEAD = f'{{"{METADATA_KEY}":{{"{VAULT_KEY}":"{{\\"header_digest\\":\\"'.encode()
_HEX_DIGESTS = re.compile(r"[0-9a-f]*")


@dataclass(frozen=True)
class VaultInfo:
    """Decoded statevault metadata of one file (empty for a plain safetensors file)."""

    version: int | None = None
    tree: Skeleton | None = None  # format 1: parsed anyway, to check the digest
    checksums: Mapping[str, str] = field(default_factory=dict)
    aliases: Mapping[str, str] = field(default_factory=dict)
    dtypes: Mapping[str, str] = field(default_factory=dict)
    header_digest: str | None = None
    # A tree of JSON ``null`` (``save(None, ...)``) is still a tree; only plain
    # safetensors files have none, so presence cannot be inferred from ``tree``.
    has_tree: bool = False
    tree_text: str | None = None  # format 2: the skeleton as JSON, parsed when needed
    block_bytes: int | None = None  # format 3: the block each digest covers (None: a tensor)

    @property
    def has_checksums(self) -> bool:
        return bool(self.checksums)


def user_metadata(metadata: Mapping[str, str], version: int | None = None) -> dict[str, str]:
    """The caller's metadata, i.e. everything but statevault's reserved keys.

    Format 1 reserved only ``"statevault"``: in its files, and in plain safetensors files,
    ``"statevault.tree"`` is the user's own key (in format 1, covered by its digest).
    """
    reserved = RESERVED_KEYS if version is not None and version >= 2 else (VAULT_KEY,)
    return {k: v for k, v in metadata.items() if k not in reserved}


def _escaped(text: str) -> str:
    """``text`` as it appears inside a JSON string (json.dumps, without the quotes)."""
    if '"' not in text and "\\" not in text and text.isprintable():
        return text
    return json.dumps(text, ensure_ascii=False)[1:-1]


def encoded_members(info: VaultInfo) -> dict[str, str]:
    """Our metadata's aliases, dtypes and tree, each as canonical JSON text.

    Encoded up front so that a save can drop the skeleton before it builds the header.
    """
    members = {
        "aliases": _checksum.canonical_json(dict(info.aliases)),
        "dtypes": _checksum.canonical_json(dict(info.dtypes)),
    }
    if info.has_tree or info.tree is not None:
        members["tree"] = _checksum.canonical_json(info.tree)
    return members


class SlottedHeader:
    """The file header of a save, encoded once with blank digests that are filled in place.

    The bytes come from the container's one encoder (:func:`container.encode_header`); our
    metadata value is encoded with fixed-width placeholder digests, so the header's length
    and every digest's byte offset are known before the data is written: each offset is the
    escaped length of the text before it, counted from where ``encode_header`` puts the value.
    ``size`` is its length; ``put`` records tensor ``index``'s digest (entries' order, which is
    data order); ``finish`` hashes the header and fills in the header digest. ``members`` are
    ``encoded_members``' texts.
    """

    def __init__(
        self,
        members: Mapping[str, str],
        entries: list[TensorEntry],
        user: Mapping[str, str],
        checksum: bool,
        block_bytes: int | None = None,
    ) -> None:
        block_bytes = BLOCK_BYTES if block_bytes is None else block_bytes  # read at call time
        before_digest = '{"header_digest":"'
        lead = f'{before_digest}{_checksum.PLACEHOLDER}","version":{FORMAT_VERSION}'
        vault = [lead, f',"aliases":{members["aliases"]}', f',"dtypes":{members["dtypes"]}']
        before_packed = None
        self.block_bytes: int | None = block_bytes
        # where each tensor's first block digest goes, in digests from the packed string's start
        self._first_block = list(
            accumulate((_checksum.block_count(e.nbytes, block_bytes) for e in entries), initial=0)
        )
        if checksum and entries:
            vault.append(
                f',"checksums":{{"algorithm":"{_checksum.ALGORITHM}",'
                f'"block_bytes":{block_bytes},"packed":"'
            )
            before_packed = "".join(vault)
            vault.append(_checksum.PLACEHOLDER * self._first_block[-1])
            vault.append('"}')
        vault.append("}")
        metadata = {VAULT_KEY: "".join(vault)}
        if "tree" in members:
            metadata[TREE_KEY] = members["tree"]
        metadata.update({FORMAT_KEY: "pt", **user})  # transformers checks "format"
        self.data = encode_header(entries, metadata)
        self.size = len(self.data)
        value_at = first_metadata_value_at(metadata)
        self._digest_at = value_at + _escaped_length(before_digest)
        self._packed_at = (
            None if before_packed is None else value_at + _escaped_length(before_packed)
        )

    def put(self, index: int, digest: str) -> None:
        """Record tensor ``index``'s digests (one per block, concatenated)."""
        assert self._packed_at is not None, "put() of a header saved without checksums"
        first, end = self._first_block[index], self._first_block[index + 1]
        assert len(digest) == (end - first) * _checksum.DIGEST_CHARS, "digest of wrong length"
        offset = self._packed_at + first * _checksum.DIGEST_CHARS
        self.data[offset : offset + len(digest)] = digest.encode("ascii")

    def finish(self) -> bytearray:
        """The complete header, once every tensor's digest has been ``put``."""
        digest = _checksum.digest(self.data).encode("ascii")
        self.data[self._digest_at : self._digest_at + _checksum.DIGEST_CHARS] = digest
        return self.data


def _escaped_length(text: str) -> int:
    """Bytes ``text`` takes inside a JSON string as ``json.dumps`` writes it (UTF-8)."""
    return len(_escaped(text).encode("utf-8"))


def signed_digest(prefix: bytes, raw: bytes) -> tuple[str, str] | None:
    """(recorded, actual) digest of a header laid out as format 2 writes it, else None.

    ``prefix`` is the file's 8-byte length prefix and ``raw`` the header bytes after it.
    """
    end = len(LEAD) + _checksum.DIGEST_CHARS
    if not raw.startswith(LEAD) or len(raw) < end:
        return None
    view = memoryview(raw)
    hasher = _checksum.new_hasher()
    for part in (prefix, view[: len(LEAD)], _checksum.PLACEHOLDER.encode(), view[end:]):
        hasher.update(part)
    return raw[len(LEAD) : end].decode("ascii", "replace"), str(hasher.hexdigest())


class PackedDigests(Mapping[str, str]):
    """Format 2 and 3's digests: name -> hex digest(s), sliced out of one string in data order.

    In format 3 a tensor's value is its blocks' digests, concatenated (``block_bytes``).
    """

    def __init__(
        self,
        table: TensorTable,
        packed: str,
        block_bytes: int | None = None,
        first_blocks: list[int] | None = None,
    ) -> None:
        self._table = table
        self._packed = packed
        self.block_bytes: int | None = block_bytes
        self._first = first_blocks  # format 3: each row's first digest (made on use if None)

    def digest_range(self, row: int) -> tuple[int, int]:
        """Character range of tensor ``row``'s digests in the packed string."""
        chars = _checksum.DIGEST_CHARS
        if self.block_bytes is None:
            return row * chars, (row + 1) * chars
        if self._first is None:
            self._first = _first_blocks(self._table, self.block_bytes)
        return self._first[row] * chars, self._first[row + 1] * chars

    def __getitem__(self, name: str) -> str:
        start, end = self.digest_range(self._table.row(name))
        return self._packed[start:end]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)


def _first_blocks(table: TensorTable, block_bytes: int) -> list[int]:
    """Index of each row's first block digest, plus the total, for format 3's packed string."""
    counts = (
        _checksum.block_count(end - start, block_bytes)
        for start, end in zip(table.starts, table.ends, strict=True)
    )
    return list(accumulate(counts, initial=0))


def decode(header: Header, *, source: str, signed: tuple[str, str] | None = None) -> VaultInfo:
    """Parse and cross-check our metadata against the header it came with.

    ``signed`` is :func:`signed_digest` of the header's bytes (format 2 checks against it).
    """
    raw = header.metadata.get(VAULT_KEY)
    if raw is None:
        _refuse_misplaced_vault(header.metadata, source)
        return VaultInfo()
    try:
        stored = json.loads(raw, parse_constant=reject_constant)
    except (ValueError, RecursionError) as exc:
        raise HeaderError(
            f"{source}: statevault metadata is not valid JSON ({exc}); header damaged"
        ) from None
    except MemoryError as exc:
        raise HeaderError(
            f"{source}: parsing the {len(raw):,}-character statevault metadata ran out of "
            "memory; it is hostile or larger than this process can hold"
        ) from exc
    if not isinstance(stored, dict):
        raise HeaderError(f"{source}: statevault metadata must be a JSON object; header damaged")
    version = stored.get("version")
    if type(version) is not int or version < 1:
        raise HeaderError(f"{source}: statevault metadata has no valid format version")
    if version > FORMAT_VERSION:
        raise HeaderError(
            f"{source}: written by a newer statevault (format {version}, this one reads up to "
            f"{FORMAT_VERSION}); upgrade statevault to read it"
        )
    # Every file we write carries the digest; without it nothing protects the header.
    recorded = stored.pop("header_digest", None)
    if not isinstance(recorded, str):
        raise HeaderError(f"{source}: statevault metadata lacks its header digest; header damaged")
    if version == 1:
        info = _decode_format1(header, stored, recorded, source)
    else:
        info = _decode_format2(header, stored, recorded, signed, source)
    _check_consistency(info, header, source)
    return info


def _mismatch(source: str, recorded: str, actual: str) -> HeaderError:
    return HeaderError(
        f"{source}: header checksum mismatch (expected {recorded}, found {actual}): tensor "
        "names, shapes, offsets or metadata were altered after saving; the file is damaged"
    )


def _decode_format2(
    header: Header,
    stored: dict[str, Any],
    recorded: str,
    signed: tuple[str, str] | None,
    source: str,
) -> VaultInfo:
    if signed is None:
        raise HeaderError(
            f"{source}: format-2 header does not begin with its header digest; header damaged"
        )
    if signed != (recorded, recorded):
        raise _mismatch(source, recorded, signed[1])
    tree_text = header.metadata.get(TREE_KEY)
    digests = _packed_digests(stored.get("checksums"), header.entries, stored["version"], source)
    return VaultInfo(
        version=stored["version"],
        has_tree=tree_text is not None,
        tree_text=tree_text,
        checksums=digests,
        aliases=_string_map(stored.get("aliases", {}), "alias", source),
        dtypes=_string_map(stored.get("dtypes", {}), "dtype", source),
        header_digest=recorded,
        block_bytes=digests.block_bytes if isinstance(digests, PackedDigests) else None,
    )


def _packed_digests(value: Any, table: TensorTable, version: int, source: str) -> Mapping[str, str]:
    if value is None:
        return {}
    packed = value.get("packed") if isinstance(value, dict) else None
    algorithm = value.get("algorithm") if isinstance(value, dict) else None
    block = value.get("block_bytes") if isinstance(value, dict) and version >= 3 else None
    if version >= 3 and (type(block) is not int or not 1 <= block <= MAX_BLOCK_BYTES):
        problem = f"block size {brief(block)} (expected a positive integer of bytes)"
    elif not isinstance(packed, str) or algorithm != _checksum.ALGORITHM:
        problem = f"algorithm {brief(algorithm)} (expected {_checksum.ALGORITHM!r}) or no digests"
    elif len(packed) != (
        expected := _checksum.DIGEST_CHARS
        * (len(table) if block is None else (first := _first_blocks(table, block))[-1])
    ):
        what = "tensors" if block is None else f"tensors in {block}-byte blocks"
        problem = (
            f"{len(packed)} characters of digests for {len(table)} {what} "
            f"(expected {expected}: {_checksum.DIGEST_CHARS} each)"
        )
    elif not _HEX_DIGESTS.fullmatch(packed):
        problem = "digests that are not lower-case hex"
    else:
        return PackedDigests(table, packed, block, first if block is not None else None)
    raise HeaderError(f"{source}: statevault checksums entry is damaged: {problem}; header damaged")


def _decode_format1(
    header: Header, stored: dict[str, Any], recorded: str, source: str
) -> VaultInfo:
    entries = list(header.entries.values())
    try:
        actual = format1.header_digest(entries, user_metadata(header.metadata, 1), stored)
    except RecursionError:  # JSON parsed just below the limit, re-encoding went over it
        raise HeaderError(f"{source}: statevault metadata is nested too deeply") from None
    if actual != recorded:
        raise _mismatch(source, recorded, actual)
    checksums = stored.get("checksums", {"digests": {}})
    if not isinstance(checksums, dict):
        raise HeaderError(f"{source}: statevault checksums entry is damaged; header damaged")
    digests = _string_map(checksums.get("digests"), "checksum", source)
    if digests and set(digests) != set(header.entries):
        missing = sorted(set(header.entries) - set(digests))[:5]
        raise HeaderError(
            f"{source}: checksum table does not cover tensors {missing}; header damaged"
        )
    return VaultInfo(
        version=stored["version"],
        tree=stored.get("tree"),
        has_tree="tree" in stored,
        checksums=digests,
        aliases=_string_map(stored.get("aliases", {}), "alias", source),
        dtypes=_string_map(stored.get("dtypes", {}), "dtype", source),
        header_digest=recorded,
    )


def _refuse_misplaced_vault(metadata: Mapping[str, str], source: str) -> None:
    """Catch damage to the ``"statevault"`` key itself, which would pass as a plain file."""
    for key, value in metadata.items():
        if value.startswith("{") and '"header_digest":' in value and '"version":' in value:
            raise HeaderError(
                f"{source}: metadata key {key!r} holds statevault metadata, expected under "
                f"{VAULT_KEY!r}; the header is damaged"
            )


def reject_constant(name: str) -> None:
    # Python's json accepts NaN/Infinity, which we never write and cannot re-hash canonically.
    raise ValueError(f"non-standard JSON constant {name}")


def _string_map(value: Any, what: str, source: str) -> dict[str, str]:
    """A str->str table from our metadata; anything else means the header was tampered with."""
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise HeaderError(f"{source}: statevault {what} table is damaged; header damaged")
    return value


def _check_consistency(info: VaultInfo, header: Header, source: str) -> None:
    names = header.entries
    for alias, target in info.aliases.items():
        if target not in names or alias in names:
            raise HeaderError(
                f"{source}: alias {alias!r} -> {target!r} does not resolve; header damaged"
            )
    for name, dtype_name in info.dtypes.items():
        dtype = dtype_from_name(dtype_name) if isinstance(dtype_name, str) else None
        spec = spec_for(dtype) if dtype is not None else None
        stored = names[name].code if name in names else None
        if stored is None or spec is None or spec.code != stored:
            where = f"its stored code {stored}" if stored else "a tensor the file does not hold"
            raise HeaderError(
                f"{source}: tensor {name!r} is recorded as dtype {dtype_name!r}, which does not "
                f"fit {where}; header damaged or written by a newer statevault"
            )
