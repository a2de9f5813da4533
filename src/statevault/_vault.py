"""statevault's own metadata, kept as canonical JSON under ``__metadata__["statevault"]``.

It records what safetensors cannot: the format version, the skeleton of nested state, true
dtypes of encoded tensors, tied-weight aliases, per-tensor checksums, and a digest of the
whole header so that damage to names, shapes or metadata is caught, not only to tensor data.
Plain safetensors files simply have none of this and load as flat state dicts.
"""

from __future__ import annotations

import json
import struct
from array import array
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from statevault import _checksum
from statevault._dtypes import dtype_from_name, spec_for
from statevault._format import (
    METADATA_KEY,
    PREFIX_BYTES,
    Header,
    quoted,
    tensor_table,
)
from statevault._table import TensorEntry
from statevault._tree import Skeleton
from statevault.errors import HeaderError

VAULT_KEY = "statevault"
FORMAT_KEY = "format"
FORMAT_VERSION = 1
RESERVED_KEYS = frozenset({VAULT_KEY})


@dataclass(frozen=True)
class VaultInfo:
    """Decoded statevault metadata of one file (empty for a plain safetensors file)."""

    version: int | None = None
    tree: Skeleton | None = None
    checksums: Mapping[str, str] = field(default_factory=dict)
    aliases: Mapping[str, str] = field(default_factory=dict)
    dtypes: Mapping[str, str] = field(default_factory=dict)
    header_digest: str | None = None
    # A tree of JSON ``null`` (``save(None, ...)``) is still a tree; only plain
    # safetensors files have none, so presence cannot be inferred from ``tree``.
    has_tree: bool = False

    @property
    def has_checksums(self) -> bool:
        return bool(self.checksums)

    def body(self) -> dict[str, Any]:
        """The JSON object stored in the header, without the header digest."""
        body: dict[str, Any] = {"version": self.version, "aliases": dict(self.aliases)}
        body["dtypes"] = dict(self.dtypes)
        if self.checksums:
            body["checksums"] = {"algorithm": _checksum.ALGORITHM, "digests": dict(self.checksums)}
        if self.has_tree or self.tree is not None:
            body["tree"] = self.tree
        return body


def user_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    """The caller's metadata, i.e. everything but statevault's reserved keys."""
    return {k: v for k, v in metadata.items() if k not in RESERVED_KEYS}


_CHUNK = 1024  # entries encoded per piece: no megabyte-long intermediate text


def _canonical_tensor_pieces(entries: list[TensorEntry]) -> Iterator[str]:
    """The canonical tensor table (sorted by name), ``_CHUNK`` entries per piece."""
    ordered = sorted(entries, key=lambda e: e.name)
    yield "{"
    for start in range(0, len(ordered), _CHUNK):
        piece = tensor_table(ordered[start : start + _CHUNK], canonical=True)
        yield ("," if start else "") + piece
    yield "}"


def _digest_parts(
    entries: list[TensorEntry], user: Mapping[str, str], body: Mapping[str, Any]
) -> Iterator[str]:
    yield '{"metadata":' + _checksum.canonical_json(dict(user)) + ',"statevault":{'
    for position, (key, value) in enumerate(sorted(body.items())):
        yield ("," if position else "") + _checksum.canonical_json(key) + ":"
        yield _checksum.canonical_json(value)
    yield '},"tensors":'
    yield from _canonical_tensor_pieces(entries)
    yield "}"


def header_digest(
    entries: list[TensorEntry], user: Mapping[str, str], body: Mapping[str, Any]
) -> str:
    """Digest over every header field that matters, in a canonical form.

    Equal to the xxh3 of ``canonical_json({"tensors": ..., "metadata": ..., "statevault":
    body})``, hashed a member or ``_CHUNK`` tensors at a time: for 20,000 tensors the whole
    document is megabytes, held next to the parsed header while a file is opened.
    """
    hasher = _checksum.new_hasher()
    for part in _digest_parts(entries, user, body):
        hasher.update(part.encode("utf-8"))
    return str(hasher.hexdigest())


def _escaped(text: str) -> str:
    """``text`` as it appears inside a JSON string (json.dumps, without the quotes)."""
    if '"' not in text and "\\" not in text and text.isprintable():
        return text
    return json.dumps(text, ensure_ascii=False)[1:-1]


def encoded_members(info: VaultInfo) -> dict[str, str]:
    """Our metadata's members but the checksums, each as canonical JSON text.

    Encoded up front so that a save can drop the skeleton before it builds the header.
    """
    body = info.body()
    body.pop("checksums", None)
    return {key: _checksum.canonical_json(value) for key, value in body.items()}


def _escaped_name(name: str) -> str:
    """A tensor name as JSON text inside a JSON string; names rarely need escaping."""
    if '"' not in name and "\\" not in name and name.isprintable():
        return f'\\"{name}\\"'
    return _escaped(quoted(name))


class SlottedHeader:
    """The file header of a save, encoded once with blank digests that are filled in place.

    Digests are fixed-width hex, so the header's length and every digest's byte offset are
    known before the data is written. Saving 20,000 small tensors used to hold the ~4 MB
    header twice over as text and bytes, plus a digest table; now it holds one bytearray.
    ``size`` is its length; ``put`` records tensor ``index``'s digest (entries' order);
    ``finish`` hashes the canonical document and fills in the header digest. ``members``
    are ``encoded_members``' texts.
    """

    def __init__(
        self,
        members: Mapping[str, str],
        entries: list[TensorEntry],
        user: Mapping[str, str],
        checksum: bool,
    ) -> None:
        self._entries = entries
        self._metadata = {FORMAT_KEY: "pt", **user}  # what transformers checks before loading
        self._by_name = array("q", sorted(range(len(entries)), key=lambda i: entries[i].name))
        self._has_checksums = checksum and bool(entries)
        self._slots = array("q", bytes(8 * len(entries))) if self._has_checksums else array("q")
        self._members = dict(members)
        self.data = bytearray(PREFIX_BYTES)
        self._digest_slot = self._encode()
        self.size = len(self.data)

    def _add(self, text: str) -> None:
        self.data += text.encode("utf-8")

    def _encode(self) -> int:
        """Append the header with blank digests; return the header digest's offset."""
        metadata = json.dumps(self._metadata, separators=(",", ":"), ensure_ascii=False)
        self._add(f'{{"{METADATA_KEY}":{metadata[:-1]},"{VAULT_KEY}":"{{')
        digest_slot = 0
        members = {**self._members, "checksums": "", "header_digest": ""}
        for position, key in enumerate(sorted(members)):
            if key == "checksums" and not self._has_checksums:
                continue
            self._add(("," if position else "") + _escaped(f'"{key}":'))
            if key == "checksums":
                self._encode_checksums()
            elif key == "header_digest":
                self._add('\\"')
                digest_slot = len(self.data)
                self._add(_checksum.PLACEHOLDER + '\\"')
            else:
                self._add(_escaped(self._members[key]))
        self._add('}"}')
        for start in range(0, len(self._entries), _CHUNK):
            self._add("," + tensor_table(self._entries[start : start + _CHUNK]))
        self._add("}")
        padding = -(len(self.data) - PREFIX_BYTES) % 8
        self._add(" " * padding)
        self.data[:PREFIX_BYTES] = struct.pack("<Q", len(self.data) - PREFIX_BYTES)
        return digest_slot

    def _encode_checksums(self) -> None:
        """Append the checksums member with blank digests, noting where each digest goes."""
        self._add(_escaped(f'{{"algorithm":"{_checksum.ALGORITHM}","digests":{{'))
        for start in range(0, len(self._by_name), _CHUNK):
            chunk = self._by_name[start : start + _CHUNK]
            offset = len(self.data)
            pieces: list[str] = []
            for index in chunk:
                # the name as JSON inside our JSON, which is itself a string in the header
                lead = ("," if pieces or start else "") + _escaped_name(self._entries[index].name)
                offset += len(lead) if lead.isascii() else len(lead.encode("utf-8"))
                self._slots[index] = offset + 3  # past :\"
                offset += 3 + _checksum.DIGEST_CHARS + 2
                pieces.append(f'{lead}:\\"{_checksum.PLACEHOLDER}\\"')
            self._add("".join(pieces))
        self._add("}}")

    def put(self, index: int, digest: str) -> None:
        offset = self._slots[index]
        self.data[offset : offset + _checksum.DIGEST_CHARS] = digest.encode("ascii")

    def _checksums_text(self) -> Iterator[str]:
        """The checksums member as canonical JSON, in pieces, from the filled-in slots."""
        yield f'{{"algorithm":"{_checksum.ALGORITHM}","digests":{{'
        for start in range(0, len(self._by_name), _CHUNK):
            pieces: list[str] = []
            for index in self._by_name[start : start + _CHUNK]:
                offset = self._slots[index]
                digest = self.data[offset : offset + _checksum.DIGEST_CHARS].decode("ascii")
                pieces.append(f'{quoted(self._entries[index].name)}:"{digest}"')
            yield ("," if start else "") + ",".join(pieces)
        yield "}}"

    def _digest_document(self) -> Iterator[str]:
        """``{"metadata":...,"statevault":...,"tensors":...}`` as ``header_digest`` hashes it."""
        yield '{"metadata":' + _checksum.canonical_json(self._metadata) + ',"statevault":{'
        members = dict(self._members)
        if self._has_checksums:
            members["checksums"] = ""
        for position, key in enumerate(sorted(members)):
            yield ("," if position else "") + f'"{key}":'
            if key == "checksums":
                yield from self._checksums_text()
            else:
                yield members[key]
        yield '},"tensors":{'
        for start in range(0, len(self._by_name), _CHUNK):
            chunk = [self._entries[i] for i in self._by_name[start : start + _CHUNK]]
            yield ("," if start else "") + tensor_table(chunk, canonical=True)
        yield "}}"

    def finish(self) -> bytearray:
        """The complete header, once every tensor's digest has been ``put``."""
        hasher = _checksum.new_hasher()
        for part in self._digest_document():
            hasher.update(part.encode("utf-8"))
        digest = str(hasher.hexdigest()).encode("ascii")
        self.data[self._digest_slot : self._digest_slot + _checksum.DIGEST_CHARS] = digest
        return self.data


def decode(header: Header, *, source: str) -> VaultInfo:
    """Parse and cross-check our metadata against the header it came with."""
    raw = header.metadata.get(VAULT_KEY)
    if raw is None:
        _refuse_misplaced_vault(header.metadata, source)
        return VaultInfo()
    try:
        stored = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise HeaderError(
            f"{source}: statevault metadata is not valid JSON ({exc}); header damaged"
        ) from None
    if not isinstance(stored, dict):
        raise HeaderError(f"{source}: statevault metadata must be a JSON object; header damaged")
    version = stored.get("version")
    if not isinstance(version, int) or version < 1:
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
    body = stored
    entries = list(header.entries.values())
    try:
        actual = header_digest(entries, user_metadata(header.metadata), body)
    except RecursionError:  # JSON parsed just below the limit, re-encoding went over it
        raise HeaderError(f"{source}: statevault metadata is nested too deeply") from None
    if actual != recorded:
        raise HeaderError(
            f"{source}: header checksum mismatch (expected {recorded}, found {actual}): tensor "
            "names, shapes, offsets or metadata were altered after saving; the file is damaged"
        )
    checksums = body.get("checksums", {"digests": {}})
    if not isinstance(checksums, dict):
        raise HeaderError(f"{source}: statevault checksums entry is damaged; header damaged")
    info = VaultInfo(
        version=version,
        tree=body.get("tree"),
        has_tree="tree" in body,
        checksums=_string_map(checksums.get("digests"), "checksum", source),
        aliases=_string_map(body.get("aliases", {}), "alias", source),
        dtypes=_string_map(body.get("dtypes", {}), "dtype", source),
        header_digest=recorded,
    )
    _check_consistency(info, header, source)
    return info


def _refuse_misplaced_vault(metadata: Mapping[str, str], source: str) -> None:
    """Catch damage to the ``"statevault"`` key itself, which would pass as a plain file."""
    for key, value in metadata.items():
        if value.startswith("{") and '"header_digest":' in value and '"version":' in value:
            raise HeaderError(
                f"{source}: metadata key {key!r} holds statevault metadata, expected under "
                f"{VAULT_KEY!r}; the header is damaged"
            )


def _reject_constant(name: str) -> None:
    # Python's json accepts NaN/Infinity, which we never write and cannot re-hash canonically.
    raise ValueError(f"non-standard JSON constant {name}")


def _string_map(value: Any, what: str, source: str) -> dict[str, str]:
    """A str->str table from our metadata; anything else means the header was tampered with."""
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise HeaderError(f"{source}: statevault {what} table is damaged; header damaged")
    return value


def _check_consistency(info: VaultInfo, header: Header, source: str) -> None:
    names = header.entries
    if not all(isinstance(v, str) for v in info.checksums.values()):
        raise HeaderError(f"{source}: checksum table is damaged")
    if info.checksums and set(info.checksums) != set(names):
        missing = sorted(set(names) - set(info.checksums))[:5]
        raise HeaderError(
            f"{source}: checksum table does not cover tensors {missing}; header damaged"
        )
    for alias, target in info.aliases.items():
        if target not in names or alias in names:
            raise HeaderError(
                f"{source}: alias {alias!r} -> {target!r} does not resolve; header damaged"
            )
    for name, dtype_name in info.dtypes.items():
        dtype = dtype_from_name(dtype_name) if isinstance(dtype_name, str) else None
        spec = spec_for(dtype) if dtype is not None else None
        if name not in names or spec is None or spec.code != names[name].code:
            raise HeaderError(
                f"{source}: tensor {name!r} is recorded as dtype {dtype_name!r}, which does not "
                f"fit its stored code; header damaged or written by a newer statevault"
            )
