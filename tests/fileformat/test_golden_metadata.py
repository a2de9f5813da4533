"""Golden bytes for what round trips cannot see: the same change on the save and the load
side (escaping of non-ASCII metadata, where digests sit, the suffixes given to colliding flat
names) passes every save-then-load test, so the bytes are pinned here, and checked against
json and xxhash themselves."""

from __future__ import annotations

import json
import struct

import torch

from statevault.fileformat import checksums
from statevault.fileformat.container import parse_header, plan_layout
from statevault.fileformat.metadata import (
    LEAD,
    SlottedHeader,
    VaultInfo,
    decode,
    encoded_members,
    signed_digest,
)
from statevault.fileformat.tree import flatten, unflatten

NON_ASCII_HEADER = (
    '{"__metadata__":{"statevault":"{\\"header_digest\\":\\"690d92884abddbce\\",\\"versi'
    'on\\":3,\\"aliases\\":{\\"tié\\":\\"w\\"},\\"dtypes\\":{},\\"checksums\\":{\\"algor'
    'ithm\\":\\"xxh3-64\\",\\"block_bytes\\":8388608,\\"packed\\":\\"0123456789abcdeffedcb'
    'a9876543210\\"}}","statevault.tree":"{\\"dict\\":[[\\"ключ\\",\\"значение\\\\\\"\\"]]}","f'
    'ormat":"pt","note":"naïve \\"quoted\\" \\\\ tab\\t"},"w":{"dtype":"F32","shape":[1],"data_o'
    'ffsets":[0,4]},"bé":{"dtype":"U8","shape":[2],"data_offsets":[4,6]}}     '
)
HEADER_DIGEST = "690d92884abddbce"
NOTE = 'naïve "quoted" \\ tab\t'


def non_ascii_header() -> bytearray:
    entries = plan_layout([("w", "F32", (1,), 4), ("bé", "U8", (2,), 2)])
    info = VaultInfo(tree={"dict": [["ключ", 'значение"']]}, has_tree=True, aliases={"tié": "w"})
    header = SlottedHeader(encoded_members(info), entries, {"note": NOTE}, checksum=True)
    assert header.size == 488
    header.put(0, "0123456789abcdef")
    header.put(1, "fedcba9876543210")
    return header.finish()


def test_non_ascii_metadata_header_is_pinned_byte_for_byte() -> None:
    data = non_ascii_header()
    body = NON_ASCII_HEADER.encode()
    assert data == struct.pack("<Q", len(body)) + body
    assert len(body) == 480


def test_the_pinned_header_is_what_json_and_xxhash_say() -> None:
    data = bytes(non_ascii_header())
    metadata = json.loads(data[8:])["__metadata__"]
    vault = json.loads(metadata["statevault"])
    assert vault["header_digest"] == HEADER_DIGEST
    assert vault["checksums"]["packed"] == "0123456789abcdeffedcba9876543210"
    assert json.loads(metadata["statevault.tree"]) == {"dict": [["ключ", 'значение"']]}
    assert metadata["note"] == NOTE and vault["aliases"] == {"tié": "w"}
    at = 8 + len(LEAD)
    blank = data[:at] + b"0" * 16 + data[at + 16 :]
    assert checksums.digest(blank) == HEADER_DIGEST
    assert signed_digest(data[:8], data[8:]) == (HEADER_DIGEST, HEADER_DIGEST)


def test_the_pinned_header_decodes_to_what_was_saved() -> None:
    raw = NON_ASCII_HEADER.encode()
    header = parse_header(raw, file_size=8 + len(raw) + 6, source="g.safetensors")
    signed = signed_digest(struct.pack("<Q", len(raw)), raw)
    info = decode(header, source="g.safetensors", signed=signed)
    assert (info.version, info.header_digest, info.has_tree) == (3, HEADER_DIGEST, True)
    assert dict(info.checksums) == {"w": "0123456789abcdef", "bé": "fedcba9876543210"}
    assert dict(info.aliases) == {"tié": "w"} and dict(info.dtypes) == {}
    assert info.tree_text == '{"dict":[["ключ","значение\\""]]}'


def test_colliding_flat_names_get_pinned_suffixes_in_visiting_order() -> None:
    x, y, z = torch.zeros(1), torch.ones(1), torch.full((2,), 2.0)
    state = {"a.b": x, "a": {"b": y, "b#2": z}, "é": "ü"}
    skeleton, tensors = flatten(state)
    assert skeleton == {
        "dict": [
            ["a.b", {"tensor": "a.b"}],
            ["a", {"dict": [["b", {"tensor": "a.b#2"}], ["b#2", {"tensor": "a.b#2#2"}]]}],
            ["é", "ü"],
        ]
    }
    assert list(tensors) == ["a.b", "a.b#2", "a.b#2#2"]
    assert tensors["a.b"] is x and tensors["a.b#2"] is y and tensors["a.b#2#2"] is z
    rebuilt = unflatten(skeleton, tensors.__getitem__)
    assert rebuilt == {"a.b": x, "a": {"b": y, "b#2": z}, "é": "ü"}
    assert rebuilt["a"]["b"] is y


def test_three_way_collisions_count_up_from_two() -> None:
    state = {"x.y": torch.zeros(1), "x": {"y": torch.zeros(1)}, 7: {"k": torch.zeros(1)}}
    nested = {
        "x": {"y.z": torch.zeros(1), "y": {"z": torch.zeros(1)}},
        "x.y": {"z": torch.zeros(1)},
    }
    assert list(flatten(nested)[1]) == ["x.y.z", "x.y.z#2", "x.y.z#3"]
    assert list(flatten(state)[1]) == ["x.y", "x.y#2", "7.k"]
    assert list(flatten(torch.zeros(1))[1]) == ["tensor"]
    assert list(flatten([torch.zeros(1), (torch.zeros(1),)])[1]) == ["0", "1.0"]
