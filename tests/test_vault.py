"""The save-side header: encoded once with blank digests, filled in place."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from statevault import _checksum
from statevault._format import encode_header, parse_header, plan_layout
from statevault._vault import (
    FORMAT_KEY,
    VAULT_KEY,
    SlottedHeader,
    VaultInfo,
    decode,
    encoded_members,
    header_digest,
)

NAMES = ["plain.weight", 'q"uote', "back\\slash", "ünï cödé", "ctl\x01", "tab\there", "z"]


def _reference(info: VaultInfo, entries: list, user: dict[str, str]) -> bytes:
    """The header as the straightforward way builds it: whole documents, json.dumps."""
    metadata = {FORMAT_KEY: "pt", **user}
    body = info.body()
    stored = dict(body, header_digest=header_digest(entries, metadata, body))
    return encode_header(entries, {**metadata, VAULT_KEY: _checksum.canonical_json(stored)})


@pytest.mark.parametrize("checksum", [True, False])
@pytest.mark.parametrize("count", [0, 1, len(NAMES)])
def test_slotted_header_matches_the_reference_encoding(checksum: bool, count: int) -> None:
    entries = plan_layout((name, "F32", (2,), 8) for name in NAMES[:count])
    tree = {"dict": [[name, {"tensor": name}] for name in NAMES[:count]]}
    info = VaultInfo(version=1, tree=tree, has_tree=True, aliases={}, dtypes={})
    user = {"run": 'x"y', "ü": "ß"}
    header = SlottedHeader(encoded_members(info), entries, user, checksum)
    size = header.size
    digests = {}
    for index, entry in enumerate(entries):
        digests[entry.name] = f"{index + 1:016x}"
        if checksum:  # as save does: no digests are computed without checksums
            header.put(index, digests[entry.name])
    data = bytes(header.finish())

    expected = replace(info, checksums=digests) if checksum else info
    assert data == _reference(expected, entries, user)
    assert len(data) == size
    parsed = parse_header(data[8:], file_size=len(data) + 8 * count, source="t")
    assert decode(parsed, source="t").checksums == (digests if checksum else {})
    assert json.loads(data[8:])["__metadata__"]["run"] == user["run"]
