"""statevault's own metadata, kept as canonical JSON under ``__metadata__["statevault"]``.

It records what safetensors cannot: the format version, the skeleton of nested state, true
dtypes of encoded tensors, tied-weight aliases, per-tensor checksums, and a digest of the
whole header so that damage to names, shapes or metadata is caught, not only to tensor data.
Plain safetensors files simply have none of this and load as flat state dicts.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from statevault import _checksum
from statevault._dtypes import dtype_from_name, spec_for
from statevault._format import Header, TensorEntry, tensor_table
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


def _canonical_object(members: Mapping[str, str]) -> str:
    """Canonical JSON of an object whose values are already canonical JSON texts."""
    return (
        "{"
        + ",".join(f"{_checksum.canonical_json(k)}:{v}" for k, v in sorted(members.items()))
        + "}"
    )


def _canonical_tensors(entries: list[TensorEntry]) -> str:
    ordered = sorted(entries, key=lambda e: e.name)
    return "{" + tensor_table(ordered, canonical=True) + "}"


def _digest_of(tensors: str, user: Mapping[str, str], body: Mapping[str, str]) -> str:
    """xxh3 of ``{"metadata":...,"statevault":...,"tensors":...}`` (keys in canonical order).

    Hashed part by part: the document is megabytes long for many tensors, and joining it
    into one string first would hold it twice more in memory.
    """
    hasher = _checksum.new_hasher()
    for part in (
        '{"metadata":',
        _checksum.canonical_json(dict(user)),
        ',"statevault":',
        _canonical_object(body),
        ',"tensors":',
        tensors,
        "}",
    ):
        hasher.update(part.encode("utf-8"))
    return str(hasher.hexdigest())


def header_digest(
    entries: list[TensorEntry], user: Mapping[str, str], body: Mapping[str, Any]
) -> str:
    """Digest over every header field that matters, in a canonical form.

    Equal to the xxh3 of ``canonical_json({"tensors": ..., "metadata": ..., "statevault":
    body})``; assembled from parts so that saving can reuse the parts that do not change.
    """
    members = {k: _checksum.canonical_json(v) for k, v in body.items()}
    return _digest_of(_canonical_tensors(entries), user, members)


def encoder(
    info: VaultInfo, entries: list[TensorEntry], user: Mapping[str, str]
) -> Callable[[Mapping[str, str]], dict[str, str]]:
    """``encode`` for a save that fills in checksums later: digests -> ``__metadata__``.

    Everything but the checksum table is encoded once, so writing the header twice (a
    placeholder before the data, the real one after) does not cost two full encodes.
    """
    metadata = {FORMAT_KEY: "pt"}  # what transformers checks before loading a safetensors file
    metadata.update(user)
    fixed = {k: _checksum.canonical_json(v) for k, v in info.body().items() if k != "checksums"}
    tensors = _canonical_tensors(entries)

    def encode_with(checksums: Mapping[str, str]) -> dict[str, str]:
        members = dict(fixed)
        if checksums:
            members["checksums"] = _checksum.canonical_json(
                {"algorithm": _checksum.ALGORITHM, "digests": dict(checksums)}
            )
        digest = _digest_of(tensors, metadata, members)
        stored = dict(members, header_digest=_checksum.canonical_json(digest))
        return {**metadata, VAULT_KEY: _canonical_object(stored)}

    return encode_with


def encode(info: VaultInfo, entries: list[TensorEntry], user: Mapping[str, str]) -> dict[str, str]:
    """Build the full ``__metadata__`` mapping for a file we write."""
    return encoder(info, entries, user)(info.checksums)


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
