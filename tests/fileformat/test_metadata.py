"""The save-side header (format 2 and 3): encoded once with blank digests, filled in place."""

from __future__ import annotations

import json

import pytest

from statevault.errors import HeaderError
from statevault.fileformat import checksums as _checksum
from statevault.fileformat.container import TABLE_CHUNK, parse_header, plan_layout
from statevault.fileformat.metadata import (
    BLOCK_BYTES,
    FORMAT_KEY,
    LEAD,
    TREE_KEY,
    VAULT_KEY,
    SlottedHeader,
    VaultInfo,
    decode,
    encoded_members,
    signed_digest,
)
from statevault.fileformat.table import TensorEntry

NAMES = ["plain.weight", 'q"uote', "back\\slash", "ünï cödé", "ctl\x01", "tab\there", "z"]


def _reference(
    entries: list[TensorEntry],
    info: VaultInfo,
    user: dict[str, str],
    digests: list[str] | None,
) -> bytes:
    """The header as the straightforward way builds it, without ``encode_header``: the whole
    document through json.dumps, then the digest of the bytes with its own characters as
    zeros."""

    def build(header_digest: str) -> bytes:
        vault: dict[str, object] = {
            "header_digest": header_digest,
            "version": 3,
            "aliases": dict(info.aliases),
            "dtypes": dict(info.dtypes),
        }
        if digests is not None:
            vault["checksums"] = {
                "algorithm": "xxh3-64",
                "block_bytes": BLOCK_BYTES,
                "packed": "".join(digests),
            }
        metadata = {
            VAULT_KEY: json.dumps(vault, separators=(",", ":"), ensure_ascii=False),
            TREE_KEY: _checksum.canonical_json(info.tree),
            FORMAT_KEY: "pt",
            **user,
        }
        document = {"__metadata__": metadata, **{e.name: e.to_json() for e in entries}}
        body = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
        body += b" " * (-len(body) % 8)
        return len(body).to_bytes(8, "little") + body

    return build(_checksum.digest(build(_checksum.PLACEHOLDER)))


MANY = [f"layer.{i}.w" for i in range(TABLE_CHUNK + 5)]  # more than one encoded piece


@pytest.mark.parametrize("checksum", [True, False])
@pytest.mark.parametrize(
    "names", [[], NAMES[:1], NAMES, MANY], ids=["none", "one", "escaped", "chunked"]
)
def test_slotted_header_matches_the_reference_encoding(checksum: bool, names: list[str]) -> None:
    entries = plan_layout((name, "F32", (2,), 8) for name in names)
    tree = {"dict": [[name, {"tensor": name}] for name in names]}
    # alias and dtype tables that need escaping move the packed digests' slot
    aliases = {f"tied ü{n}": names[0] for n in range(2)} if names else {}
    info = VaultInfo(version=2, tree=tree, has_tree=True, aliases=aliases, dtypes={})
    user = {"run": 'x"y', "ü": "ß"}
    header = SlottedHeader(encoded_members(info), entries, user, checksum)
    size = header.size
    digests = [f"{index + 1:016x}" for index in range(len(entries))]
    if checksum:  # as save does: no digests are computed without checksums
        for index, digest in enumerate(digests):
            header.put(index, digest)
    data = bytes(header.finish())

    assert data == _reference(entries, info, user, digests if checksum and entries else None)
    assert len(data) == size
    assert data[8:].startswith(LEAD)
    parsed = parse_header(data[8:], file_size=len(data) + 8 * len(names), source="t")
    decoded = decode(parsed, source="t", signed=signed_digest(data[:8], data[8:]))
    expected = {e.name: d for e, d in zip(entries, digests, strict=True)} if checksum else {}
    assert dict(decoded.checksums) == expected
    assert dict(decoded.aliases) == aliases
    assert decoded.tree_text is not None and json.loads(decoded.tree_text) == tree
    assert json.loads(data[8:])["__metadata__"]["run"] == user["run"]


def _saved_header() -> bytes:
    entries = plan_layout([("a", "F32", (2,), 8), ("b", "I8", (3,), 3)])
    info = VaultInfo(version=2, tree={"tensor": "a"}, has_tree=True)
    header = SlottedHeader(encoded_members(info), entries, {}, True)
    header.put(0, "0123456789abcdef")
    header.put(1, "fedcba9876543210")
    return bytes(header.finish())


def test_signed_digest_covers_every_header_byte_but_its_own() -> None:
    data = _saved_header()
    recorded, actual = signed_digest(data[:8], data[8:]) or ("", "")
    assert recorded == actual
    for position in range(len(data) - 8):
        if len(LEAD) <= position < len(LEAD) + 16:
            continue  # the digest itself: a flip there is a mismatch of another kind
        damaged = bytearray(data[8:])
        damaged[position] ^= 0x01
        found = signed_digest(data[:8], bytes(damaged))
        assert found is None or found[0] != found[1], position
    assert signed_digest(data[:8], data[9:]) is None  # does not start as format 2 writes


def test_format2_decode_refuses_a_header_whose_digest_is_not_first() -> None:
    data = _saved_header()
    parsed = parse_header(data[8:], file_size=len(data) + 11, source="t")
    with pytest.raises(HeaderError, match="does not begin with its header digest"):
        decode(parsed, source="t", signed=None)
    with pytest.raises(HeaderError, match="header checksum mismatch"):
        decode(parsed, source="t", signed=("0" * 16, "1" * 16))


def test_format3_slots_hold_one_digest_per_block_and_decode_by_tensor() -> None:
    # 8-byte blocks: 20 bytes is three blocks (the last short), 8 is one, 0 is one (empty)
    entries = plan_layout([("a", "U8", (20,), 20), ("b", "U8", (8,), 8), ("c", "U8", (0,), 0)])
    info = VaultInfo(version=3, tree={"tensor": "a"}, has_tree=True)
    header = SlottedHeader(encoded_members(info), entries, {}, True, block_bytes=8)
    per_tensor = {"a": ["1" * 16, "2" * 16, "3" * 16], "b": ["4" * 16], "c": ["5" * 16]}
    for index, digests in enumerate(per_tensor.values()):
        header.put(index, "".join(digests))
    data = bytes(header.finish())
    parsed = parse_header(data[8:], file_size=len(data) + 28, source="t")
    decoded = decode(parsed, source="t", signed=signed_digest(data[:8], data[8:]))
    assert decoded.version == 3 and decoded.block_bytes == 8
    assert dict(decoded.checksums) == {name: "".join(d) for name, d in per_tensor.items()}
    with pytest.raises(AssertionError, match="wrong length"):
        header.put(0, "1" * 16)  # a three-block tensor needs three digests
