"""The container at each of its limits, and its errors asserted whole (type, file, counts).

Each limit is tested on both sides: the last value accepted and the first refused, so moving
a bound by one (``<`` for ``<=``, 8 for 7) fails a test.
"""

from __future__ import annotations

import json
import struct

import pytest

from statevault.errors import HeaderError, TruncatedFileError
from statevault.fileformat.container import (
    MAX_ELEMENTS,
    MAX_HEADER_BYTES,
    METADATA_KEY,
    NOT_SAFETENSORS,
    PREFIX_BYTES,
    Header,
    header_length,
    header_text,
    parse_header,
    parse_header_text,
    plan_layout,
    tensor_table,
)
from statevault.fileformat.table import TensorEntry

SOURCE = "f.safetensors"
IMPLAUSIBLE = f"{SOURCE}: {NOT_SAFETENSORS}; the file is damaged or not a checkpoint"


def test_the_format_constants() -> None:
    assert (PREFIX_BYTES, MAX_HEADER_BYTES, MAX_ELEMENTS, METADATA_KEY) == (
        8,
        100_000_000,
        9223372036854775807,
        "__metadata__",
    )


def prefix(length: int, ninth: bytes = b"{") -> bytes:
    return struct.pack("<Q", length) + ninth


def test_a_header_of_exactly_the_maximum_size_is_accepted_one_more_is_not() -> None:
    size = PREFIX_BYTES + MAX_HEADER_BYTES
    assert header_length(prefix(MAX_HEADER_BYTES), file_size=size, source=SOURCE) == 100_000_000
    with pytest.raises(HeaderError) as caught:
        header_length(prefix(MAX_HEADER_BYTES + 1), file_size=size + 1, source=SOURCE)
    assert type(caught.value) is HeaderError and str(caught.value) == IMPLAUSIBLE


def test_the_shortest_header_is_two_bytes() -> None:
    assert header_length(prefix(2), file_size=10, source=SOURCE) == 2
    for length in (0, 1):
        with pytest.raises(HeaderError) as caught:
            header_length(prefix(length), file_size=10, source=SOURCE)
        assert str(caught.value) == IMPLAUSIBLE


def test_the_length_is_read_little_endian_as_an_int() -> None:
    length = header_length(b"\x10\x01\x00\x00\x00\x00\x00\x00{", file_size=300, source=SOURCE)
    assert length == 272 and type(length) is int


def test_an_eight_byte_file_has_a_prefix_but_no_header() -> None:
    with pytest.raises(TruncatedFileError) as caught:
        header_length(prefix(2, b""), file_size=8, source=SOURCE)
    assert type(caught.value) is TruncatedFileError
    assert str(caught.value) == (
        f"{SOURCE}: header needs 2 bytes but the file holds only 0 after the prefix; the file "
        "is truncated or damaged"
    )


@pytest.mark.parametrize(("file_size", "given"), [(7, 7), (8, 7), (0, 0)])
def test_fewer_than_eight_bytes_is_too_short(file_size: int, given: int) -> None:
    with pytest.raises(TruncatedFileError) as caught:
        header_length(prefix(2)[:given], file_size=file_size, source=SOURCE)
    assert str(caught.value) == (
        f"{SOURCE}: file is {file_size} bytes, too short to be a safetensors file (needs at "
        "least 8); it was probably truncated or is not a checkpoint"
    )


def test_a_header_that_fills_the_file_exactly_is_accepted() -> None:
    assert header_length(prefix(16), file_size=24, source=SOURCE) == 16
    assert header_length(prefix(16, b""), file_size=24, source=SOURCE) == 16
    with pytest.raises(
        TruncatedFileError, match="header needs 16 bytes but the file holds only 15"
    ):
        header_length(prefix(16), file_size=23, source=SOURCE)


@pytest.mark.parametrize("ninth", [b" ", b"[", b"\x00", b"}"])
def test_a_header_must_open_with_a_brace(ninth: bytes) -> None:
    with pytest.raises(HeaderError) as caught:
        header_length(prefix(2, ninth), file_size=10, source=SOURCE)
    assert str(caught.value) == IMPLAUSIBLE


def test_bad_utf8_names_the_byte_without_quoting_it() -> None:
    with pytest.raises(HeaderError) as caught:
        header_text(b'{"a\xff":1}', source=SOURCE)
    assert type(caught.value) is HeaderError
    assert str(caught.value) == (
        f"{SOURCE}: header is not valid UTF-8 (at byte 3 of the header); the file is damaged "
        "or not a safetensors file"
    )
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def parse(table: dict[str, object], data_size: int) -> Header:
    raw = json.dumps(table).encode()
    return parse_header(raw, file_size=PREFIX_BYTES + len(raw) + data_size, source=SOURCE)


def refusal(table: dict[str, object], data_size: int) -> str:
    with pytest.raises(HeaderError) as caught:
        parse(table, data_size)
    assert type(caught.value) is HeaderError
    return str(caught.value)


def test_element_counts_up_to_two_to_the_63_minus_one_are_accepted() -> None:
    # parse_header does no I/O: the file's size is a number, so the limit is testable
    largest = {"dtype": "U8", "shape": [MAX_ELEMENTS], "data_offsets": [0, MAX_ELEMENTS]}
    header = parse({"t": largest}, MAX_ELEMENTS)
    assert header.entries["t"] == TensorEntry("t", "U8", (MAX_ELEMENTS,), 0, MAX_ELEMENTS)
    assert header.data_size == MAX_ELEMENTS
    one_more = {"dtype": "U8", "shape": [MAX_ELEMENTS + 1], "data_offsets": [0, 0]}
    assert refusal({"t": one_more}, 0) == (
        f"{SOURCE}: tensor 't': shape [9223372036854775808] is too large for a torch tensor; "
        "the header is damaged"
    )


def test_a_data_section_past_int64_is_refused_naming_the_tensor() -> None:
    half = 2**62
    table = {
        "a": {"dtype": "U8", "shape": [half], "data_offsets": [0, half]},
        "b": {"dtype": "U8", "shape": [half], "data_offsets": [half, 2 * half]},
    }
    assert refusal(table, 2 * half) == (
        f"{SOURCE}: tensor 'b': data_offsets [4611686018427387904, 9223372036854775808] end "
        "beyond 2**63 - 1, past any file's end; the header is damaged"
    )


def test_a_first_tensor_at_offset_one_is_refused() -> None:
    table = {"t": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}}
    assert refusal(table, 2) == (
        f"{SOURCE}: tensor 't' starts at data offset 1, expected 0: it leaves a gap; the "
        "header is damaged"
    )


def test_a_tensor_starting_one_byte_late_or_early_is_refused_by_position() -> None:
    a = {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}
    late = {"dtype": "U8", "shape": [1], "data_offsets": [5, 6]}
    early = {"dtype": "U8", "shape": [1], "data_offsets": [3, 4]}
    assert refusal({"a": a, "b": late}, 6) == (
        f"{SOURCE}: tensor 'b' starts at data offset 5, expected 4: it leaves a gap; the "
        "header is damaged"
    )
    assert refusal({"a": a, "b": early}, 4) == (
        f"{SOURCE}: tensor 'b' starts at data offset 3, expected 4: it overlaps the previous "
        "tensor; the header is damaged"
    )


def test_the_data_section_must_match_the_file_to_the_byte() -> None:
    table = {"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
    header = parse(table, 8)
    raw_length = len(json.dumps(table).encode())
    assert (header.data_offset, header.data_size) == (PREFIX_BYTES + raw_length, 8)
    assert dict(header.metadata) == {} and type(header.metadata) is dict
    assert refusal(table, 9) == (
        f"{SOURCE}: 1 unexpected trailing bytes after the last tensor (data section should be "
        "8 bytes); the file is damaged"
    )
    with pytest.raises(TruncatedFileError) as caught:
        parse(table, 7)
    assert str(caught.value) == (
        f"{SOURCE}: file is truncated: data section needs 8 bytes, found 7; 1 tensor(s) cut "
        "off, first 't'"
    )


def test_truncation_counts_only_the_tensors_past_the_end() -> None:
    table = {
        "a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
        "b": {"dtype": "U8", "shape": [4], "data_offsets": [4, 8]},
        "c": {"dtype": "U8", "shape": [0], "data_offsets": [8, 8]},
        "d": {"dtype": "U8", "shape": [4], "data_offsets": [8, 12]},
    }
    with pytest.raises(TruncatedFileError) as caught:
        parse(table, 8)
    assert str(caught.value) == (
        f"{SOURCE}: file is truncated: data section needs 12 bytes, found 8; 1 tensor(s) cut "
        "off, first 'd'"
    )


def test_a_header_with_only_metadata_has_an_empty_data_section() -> None:
    header = parse({METADATA_KEY: {"k": "é"}}, 0)
    assert (len(header.entries), dict(header.metadata), header.data_size) == (0, {"k": "é"}, 0)
    assert refusal({METADATA_KEY: {"k": "v"}}, 1) == (
        f"{SOURCE}: 1 unexpected trailing bytes after the last tensor (data section should be "
        "0 bytes); the file is damaged"
    )


def test_metadata_of_another_type_is_named() -> None:
    assert refusal({METADATA_KEY: "text"}, 0) == (
        f"{SOURCE}: '__metadata__' must map strings to strings, got a str; the header is damaged"
    )


def test_a_malformed_tensor_is_refused_naming_file_and_tensor() -> None:
    bad = {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}
    assert refusal({"w": bad}, 4) == (
        f"{SOURCE}: tensor 'w': dtype F32 x shape [2] needs 8 bytes but data_offsets span 4; "
        "the header is damaged"
    )


def test_header_bytes_count_toward_the_data_offset() -> None:
    text = '{"t":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}'
    header = parse_header_text(text, header_bytes=64, file_size=PREFIX_BYTES + 64 + 1, source="x")
    assert (header.data_offset, header.data_size) == (72, 1)


def test_a_prefix_read_with_more_bytes_than_needed_is_judged_by_its_ninth() -> None:
    assert header_length(prefix(2) + b"}" + bytes(7), file_size=10, source=SOURCE) == 2


def test_bad_utf8_through_parse_header_names_the_file() -> None:
    with pytest.raises(HeaderError) as caught:
        parse_header(b'{"\xc3":1}', file_size=18, source=SOURCE)
    assert str(caught.value) == (
        f"{SOURCE}: header is not valid UTF-8 (at byte 2 of the header); the file is damaged "
        "or not a safetensors file"
    )


@pytest.mark.parametrize("name", ['é"q', "tab\tü", "back\\slash", "plain", "ü"])
def test_tensor_names_are_written_as_json_dumps_writes_them_without_ascii_escapes(
    name: str,
) -> None:
    entries = plan_layout([(name, "U8", (2, 1), 2), ("b", "F32", (2, 1), 8)])
    members = {e.name: e.to_json() for e in entries}
    expected = json.dumps(members, separators=(",", ":"), ensure_ascii=False)[1:-1]
    assert tensor_table(entries) == expected  # the default is the file's field order
    canonical = json.dumps(members, separators=(",", ":"), ensure_ascii=False, sort_keys=True)
    # canonical sorts each entry's fields only; the tensors stay in the given order
    by_entry = ",".join(
        f"{json.dumps(e.name, ensure_ascii=False)}:"
        + json.dumps(e.to_json(), separators=(",", ":"), sort_keys=True)
        for e in entries
    )
    assert tensor_table(entries, canonical=True) == by_entry
    assert sorted(json.loads("{" + by_entry + "}")) == sorted(json.loads(canonical))
