"""The pure header codec: golden bytes, layout order, and validation of what files claim."""

from __future__ import annotations

import json
import struct

import pytest

from statevault.errors import CorruptFileError, HeaderError, TruncatedFileError
from statevault.fileformat.container import (
    MAX_HEADER_BYTES,
    TABLE_CHUNK,
    encode_header,
    first_metadata_value_at,
    header_length,
    parse_header,
    plan_layout,
)
from statevault.fileformat.table import TensorEntry


def header_of(table: object) -> bytes:
    return json.dumps(table).encode()


def parse(table: object, data_size: int) -> object:
    raw = header_of(table)
    return parse_header(raw, file_size=8 + len(raw) + data_size, source="f.safetensors")


def test_golden_bytes_of_a_tiny_header() -> None:
    entries = plan_layout([("b", "F32", (2,), 8), ("a", "I8", (3,), 3)])
    encoded = encode_header(entries, {"k": "v"})
    body = (
        b'{"__metadata__":{"k":"v"},"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
        b'"a":{"dtype":"I8","shape":[3],"data_offsets":[8,11]}}'
    )
    padded = body + b" " * (-len(body) % 8)
    assert encoded == struct.pack("<Q", len(padded)) + padded
    assert len(padded) % 8 == 0


@pytest.mark.parametrize("count", [0, 1, TABLE_CHUNK, TABLE_CHUNK + 1, 2 * TABLE_CHUNK + 3])
@pytest.mark.parametrize("metadata", [None, {}, {"ü k": 'v"\\', "z": "\x01"}])
def test_encode_header_writes_what_json_dumps_writes(
    count: int, metadata: dict[str, str] | None
) -> None:
    entries = plan_layout((f"t{i}", "I8", (i % 3,), i % 3) for i in range(count))
    document: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    document.update({e.name: e.to_json() for e in entries})
    body = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
    body += b" " * (-len(body) % 8)
    encoded = encode_header(entries, metadata)
    assert isinstance(encoded, bytearray)  # saves fill digests into it in place
    assert encoded == struct.pack("<Q", len(body)) + body


@pytest.mark.parametrize("first", ["k", "ü k", 'q"\\'])
def test_first_metadata_value_at_points_at_the_value_text(first: str) -> None:
    metadata = {first: "VALUE", "other": "x"}
    encoded = encode_header(plan_layout([("a", "F32", (1,), 4)]), metadata)
    at = first_metadata_value_at(metadata)
    assert encoded[at : at + 5] == b"VALUE" and encoded[at - 1 : at] == b'"'


def test_plan_layout_orders_by_element_size_then_name() -> None:
    entries = plan_layout(
        [
            ("z", "U8", (4,), 4),
            ("b", "F16", (3,), 6),
            ("a", "F16", (1,), 2),
            ("y", "F64", (1,), 8),
            ("m", "BOOL", (2,), 2),
        ]
    )
    assert [e.name for e in entries] == ["y", "a", "b", "z", "m"]
    assert [(e.start, e.end) for e in entries] == [(0, 8), (8, 10), (10, 16), (16, 20), (20, 22)]
    for entry in entries:  # every tensor aligned to its element size
        size = {"F64": 8, "F16": 2, "U8": 1, "BOOL": 1}[entry.code]
        assert entry.start % size == 0


def test_parse_accepts_what_encode_writes() -> None:
    entries = plan_layout([("w", "F32", (2, 3), 24), ("s", "I64", (), 8), ("e", "F16", (0,), 0)])
    encoded = encode_header(entries, {"a": "b"})
    raw = encoded[8:]
    header = parse_header(raw, file_size=len(encoded) + 32, source="x")
    assert dict(header.metadata) == {"a": "b"}
    assert list(header.entries.values()) == sorted(entries, key=lambda e: (e.start, e.end))
    assert header.data_offset == len(encoded) and header.data_size == 32
    assert header.entries["s"] == TensorEntry("s", "I64", (), 0, 8)


def test_header_length_checks() -> None:
    assert header_length(struct.pack("<Q", 16), file_size=24, source="x") == 16
    with pytest.raises(TruncatedFileError, match="too short"):
        header_length(b"\x01\x02", file_size=2, source="x")
    implausible = "not a plausible header length"
    with pytest.raises(HeaderError, match=implausible):
        header_length(struct.pack("<Q", MAX_HEADER_BYTES + 1), file_size=10**12, source="x")
    with pytest.raises(HeaderError, match=implausible):
        header_length(b"\xff" * 8, file_size=100, source="x")
    with pytest.raises(TruncatedFileError, match="x: header needs 100 bytes"):
        header_length(struct.pack("<Q", 100), file_size=50, source="x")
    with pytest.raises(TruncatedFileError, match="x: header needs 100 bytes"):
        header_length(struct.pack("<Q", 100) + b"{", file_size=50, source="x")
    # any other ninth byte: not a checkpoint, so the decoded number is not echoed
    with pytest.raises(HeaderError, match=implausible) as caught:
        header_length(struct.pack("<Q", 100) + b"x", file_size=50, source="x")
    assert "100" not in str(caught.value)


GOOD = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize(
    ("table", "data_size", "error", "message"),
    [
        ([1, 2], 0, HeaderError, "JSON object"),
        ("text", 0, HeaderError, "JSON object"),
        ({"t": [1]}, 0, HeaderError, "expected an object"),
        ({"t": {"shape": [2], "data_offsets": [0, 8]}}, 8, HeaderError, "dtype"),
        ({"t": dict(GOOD, dtype="F99")}, 8, HeaderError, "F99"),
        ({"t": dict(GOOD, dtype=7)}, 8, HeaderError, "dtype"),
        ({"t": dict(GOOD, shape=[-2])}, 8, HeaderError, "shape"),
        ({"t": dict(GOOD, shape=[True, 2])}, 8, HeaderError, "shape"),
        ({"t": dict(GOOD, shape=[2.0])}, 8, HeaderError, "shape"),
        ({"t": dict(GOOD, shape="2")}, 8, HeaderError, "shape"),
        ({"t": dict(GOOD, shape=None)}, 8, HeaderError, "shape"),
        ({"t": dict(GOOD, shape=[3])}, 8, HeaderError, "needs 12 bytes"),
        ({"t": dict(GOOD, data_offsets=[8, 0])}, 8, HeaderError, "data_offsets"),
        ({"t": dict(GOOD, data_offsets=[0])}, 8, HeaderError, "data_offsets"),
        ({"t": dict(GOOD, data_offsets=[-8, 0])}, 8, HeaderError, "data_offsets"),
        ({"t": dict(GOOD, data_offsets=[0.0, 8])}, 8, HeaderError, "data_offsets"),
        ({"t": dict(GOOD, data_offsets=[False, 8])}, 8, HeaderError, "data_offsets"),
        ({"t": dict(GOOD, data_offsets=[4, 12])}, 12, HeaderError, "gap"),
        (
            {"a": GOOD, "b": dict(GOOD, data_offsets=[4, 12])},
            12,
            HeaderError,
            "overlaps",
        ),
        ({"t": GOOD}, 4, TruncatedFileError, "truncated"),
        ({"t": GOOD}, 9, HeaderError, "trailing"),
        ({"t": dict(GOOD, data_offsets=[0, 2**70])}, 8, HeaderError, "needs 8 bytes"),
        (
            {"t": dict(GOOD, shape=[2**40, 2**40, 2**40], data_offsets=[0, 2**122])},
            8,
            HeaderError,
            "too large",
        ),
        ({"t": dict(GOOD, shape=[0, 2**63], data_offsets=[0, 0])}, 0, HeaderError, "too large"),
        (
            {"t": dict(GOOD, shape=[2**31, 0, 2**32], data_offsets=[0, 0])},
            0,
            HeaderError,
            "too large",
        ),
        ({"__metadata__": {"a": 1}}, 0, HeaderError, "strings to strings"),
        ({"__metadata__": [1]}, 0, HeaderError, "strings to strings"),
    ],
)
def test_hostile_headers_are_refused(
    table: object, data_size: int, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message) as info:
        parse(table, data_size)
    assert "f.safetensors" in str(info.value)


def test_duplicate_names_are_refused() -> None:
    raw = (
        b'{"t":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
        b'"t":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}'
    )
    with pytest.raises(HeaderError, match="duplicate key 't'"):
        parse_header(raw, file_size=8 + len(raw) + 2, source="f")


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"\xff\xfe\x00",
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
        b'{"t": NaN}',
        b"",
        b"{} trailing",
    ],
    ids=["text", "bad-utf8", "deep-array", "deep-object", "nan", "empty", "trailing"],
)
def test_malformed_json_raises_header_error(raw: bytes) -> None:
    with pytest.raises(CorruptFileError):
        parse_header(raw, file_size=8 + len(raw), source="f")


def test_huge_shape_product_cannot_wrap_around() -> None:
    # dtype x shape is computed with Python ints, so it cannot wrap around to a small size
    table = {"t": {"dtype": "F64", "shape": [2**61, 2], "data_offsets": [0, 0]}}
    with pytest.raises(HeaderError, match="needs"):
        parse(table, 0)


def test_largest_empty_shape_torch_can_hold_is_accepted() -> None:
    table = {"t": {"dtype": "F64", "shape": [0, 2**63 - 1], "data_offsets": [0, 0]}}
    header = parse(table, 0)
    assert header.entries["t"].shape == (0, 2**63 - 1)  # type: ignore[attr-defined]


def test_empty_tensors_share_offsets() -> None:
    table = {
        "e1": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]},
        "e2": {"dtype": "I8", "shape": [0, 3], "data_offsets": [0, 0]},
        "t": GOOD,
    }
    header = parse(table, 8)
    assert set(header.entries) == {"e1", "e2", "t"}  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("table", "data_size", "error", "message"),
    [
        (
            {"w": dict(GOOD, shape=[3])},
            8,
            HeaderError,
            "f.safetensors: tensor 'w': dtype F32 x shape [3] needs 12 bytes but data_offsets "
            "span 8; the header is damaged",
        ),
        (
            {"w": dict(GOOD, data_offsets=[4, 12])},
            12,
            HeaderError,
            "f.safetensors: tensor 'w' starts at data offset 4, expected 0: it leaves a gap; "
            "the header is damaged",
        ),
        (
            {"a": GOOD, "b": dict(GOOD, data_offsets=[4, 12])},
            12,
            HeaderError,
            "f.safetensors: tensor 'b' starts at data offset 4, expected 8: it overlaps the "
            "previous tensor; the header is damaged",
        ),
        (
            {
                "a": GOOD,
                "b": dict(GOOD, data_offsets=[8, 16]),
                "c": dict(GOOD, data_offsets=[16, 24]),
            },
            10,
            TruncatedFileError,
            "f.safetensors: file is truncated: data section needs 24 bytes, found 10; 2 tensor(s) "
            "cut off, first 'b'",
        ),
        (
            {"w": GOOD},
            11,
            HeaderError,
            "f.safetensors: 3 unexpected trailing bytes after the last tensor (data section "
            "should be 8 bytes); the file is damaged",
        ),
        (
            {"__metadata__": {"k": "v", "n": 1}},
            0,
            HeaderError,
            "f.safetensors: '__metadata__' must map strings to strings, but 'n' maps to 1; the "
            "header is damaged",
        ),
        (
            {"__metadata__": [1]},
            0,
            HeaderError,
            "f.safetensors: '__metadata__' must map strings to strings, got a list; the header "
            "is damaged",
        ),
    ],
    ids=["span", "gap", "overlap", "truncated", "trailing", "metadata-value", "metadata-list"],
)
def test_refusals_name_the_file_the_tensor_and_the_byte_counts(
    table: object, data_size: int, error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as info:
        parse(table, data_size)
    assert type(info.value) is error and str(info.value) == message


def test_short_header_refusals_give_the_byte_counts() -> None:
    with pytest.raises(TruncatedFileError) as short:
        header_length(b"\x01\x02", file_size=2, source="f.safetensors")
    assert str(short.value) == (
        "f.safetensors: file is 2 bytes, too short to be a safetensors file (needs at least 8); "
        "it was probably truncated or is not a checkpoint"
    )
    with pytest.raises(TruncatedFileError) as cut:
        header_length(struct.pack("<Q", 100) + b"{", file_size=50, source="f.safetensors")
    assert str(cut.value) == (
        "f.safetensors: header needs 100 bytes but the file holds only 42 after the prefix; "
        "the file is truncated or damaged"
    )
