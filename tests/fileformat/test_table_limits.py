"""The tensor table's parser at its limits, its messages asserted whole, and its fast path.

A mutant that sends a well-formed header down the careful path gives the same table, only
slower; the spies below make that path fail instead, so the fast path is asserted taken.
"""

from __future__ import annotations

from array import array
from typing import Any

import pytest

from statevault.fileformat import table as table_module
from statevault.fileformat.container import (
    MAX_ELEMENTS,
    METADATA_KEY,
    encode_header,
    plan_layout,
)
from statevault.fileformat.dtypes import CODE_ITEMSIZE
from statevault.fileformat.table import (
    OBJECTS_LIMIT,
    SCAN_CHARS,
    HeaderProblem,
    TensorEntry,
    TensorTable,
    bounded_numel,
    brief,
    entry_problem,
    first_misplaced,
    parse_columns,
)


def parse(text: str) -> tuple[TensorTable, Any]:
    return parse_columns(
        text, itemsizes=CODE_ITEMSIZE, max_elements=MAX_ELEMENTS, metadata_key=METADATA_KEY
    )


def problem(text: str) -> str:
    with pytest.raises(HeaderProblem) as caught:
        parse(text)
    return str(caught.value)


def _forbidden(*args: object, **kwargs: object) -> Any:
    raise AssertionError("a well-formed header left the fast path")


class _Unwalked(array):  # type: ignore[type-arg]
    """A column that may be sliced and compared (in C) but not walked in Python."""

    def __iter__(self) -> Any:
        raise AssertionError("walked row by row")


def test_well_formed_headers_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    entries = plan_layout(
        (f"layer{i}.{p}", code, (i + 1, 3), (i + 1) * 3 * CODE_ITEMSIZE[code])
        for i in range(40)
        for p, code in (("weight", "F32"), ("bias", "BF16"), ("steps", "I64"))
    )
    text = encode_header(entries, {"k": "v", "é": "ü"})[8:].decode()
    # the careful per-field check, the reordering and the out-of-order field handling
    monkeypatch.setattr(table_module, "entry_problem", _forbidden)
    monkeypatch.setattr(table_module, "sorted", _forbidden, raising=False)
    monkeypatch.setattr(table_module, "_is_object", _forbidden)
    monkeypatch.setattr(table_module, "_offsets_like", _forbidden)
    table, metadata = parse(text)
    assert list(table.values()) == entries
    assert metadata == {"k": "v", "é": "ü"}
    # the offsets check compares the columns in C, it does not walk them
    starts = _Unwalked("q", table.starts)
    ends = _Unwalked("q", table.ends)
    assert (
        first_misplaced(TensorTable(table.names, table.codes, table.shapes, starts, ends)) is None
    )


def test_first_misplaced_finds_the_first_row_out_of_place() -> None:
    def at(*spans: tuple[int, int]) -> TensorTable:
        return TensorTable(
            [f"t{i}" for i in range(len(spans))],
            ["U8"] * len(spans),
            [(end - start,) for start, end in spans],
            array("q", [start for start, _ in spans]),
            array("q", [end for _, end in spans]),
        )

    assert first_misplaced(at()) is None
    assert first_misplaced(at((0, 4), (4, 4), (4, 6))) is None
    assert first_misplaced(at((1, 2))) == 0
    assert first_misplaced(at((0, 4), (4, 6), (7, 9))) == 2
    assert first_misplaced(at((0, 4), (3, 6), (6, 9))) == 1


def test_a_header_out_of_data_order_is_reordered() -> None:
    text = (
        '{"b":{"dtype":"U8","shape":[2],"data_offsets":[4,6]},'
        '"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}'
    )
    table, metadata = parse(text)
    assert list(table.values()) == [
        TensorEntry("a", "U8", (4,), 0, 4),
        TensorEntry("b", "U8", (2,), 4, 6),
    ]
    assert (table.row("a"), table.row("b"), metadata) == (0, 1, None)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ((None, [1], [0, 1]), "missing or non-string 'dtype'"),
        (
            ("F99", [1], [0, 1]),
            "dtype code 'F99' is not supported by this statevault version (known: BF16, BOOL, "
            "C64, F16, F32, F64, F8_E4M3, F8_E4M3FNUZ, F8_E5M2, F8_E5M2FNUZ, F8_E8M0, I16, I32, "
            "I64, I8, U16, U32, U64, U8)",
        ),
        (("U8", (1,), [0, 1]), "'shape' must be a list of non-negative integers, got (1,)"),
        (("U8", [1, -1], [0, 1]), "'shape' must be a list of non-negative integers, got [1, -1]"),
        (("U8", [2**63], [0, 1]), "shape [9223372036854775808] is too large for a torch tensor"),
        (("U8", [1], (0, 1)), "'data_offsets' must be [begin, end] with 0 <= begin <= end, got (0, 1)"),
        (("U8", [1], [0, 1, 2]), "'data_offsets' must be [begin, end] with 0 <= begin <= end, got [0, 1, 2]"),
        (("U8", [1], [0, -1]), "'data_offsets' must be [begin, end] with 0 <= begin <= end, got [0, -1]"),
        (("U8", [1], [2, 1]), "'data_offsets' must be [begin, end] with 0 <= begin <= end, got [2, 1]"),
        (("U8", [1], [0, 1.0]), "'data_offsets' must be [begin, end] with 0 <= begin <= end, got [0, 1.0]"),
        (("I16", [3], [0, 5]), "dtype I16 x shape [3] needs 6 bytes but data_offsets span 5"),
        (("I16", [3], [1, 8]), "dtype I16 x shape [3] needs 6 bytes but data_offsets span 7"),
        (("U8", [0], [2**63, 2**63]), "data_offsets [9223372036854775808, 9223372036854775808] end beyond 2**63 - 1, past any file's end"),
    ],
)  # fmt: skip
def test_each_field_problem_is_said_whole(fields: tuple[Any, Any, Any], message: str) -> None:
    assert entry_problem(*fields, CODE_ITEMSIZE, MAX_ELEMENTS) == message


def test_fields_at_their_limits_are_accepted() -> None:
    assert (
        entry_problem("U8", [MAX_ELEMENTS], [0, MAX_ELEMENTS], CODE_ITEMSIZE, MAX_ELEMENTS) is None
    )
    assert (
        entry_problem("U8", [0], [MAX_ELEMENTS, MAX_ELEMENTS], CODE_ITEMSIZE, MAX_ELEMENTS) is None
    )
    assert entry_problem("F64", [], [0, 8], CODE_ITEMSIZE, MAX_ELEMENTS) is None
    assert entry_problem("U8", [1], [3, 4], CODE_ITEMSIZE, MAX_ELEMENTS) is None


@pytest.mark.parametrize(
    ("shape", "limit", "numel"),
    [
        ([], 10, 1),
        ([1, 1, 1], 10, 1),
        ([2, 5], 10, 10),
        ([2, 6], 10, None),
        ([11], 10, None),
        ([0, 11], 10, None),  # an empty tensor's other dims are bounded too
        ([0, 10], 10, 0),
        ([3, 0, 3], 10, 0),
        ([2**62, 2], MAX_ELEMENTS, None),
        ([2**62, 1], MAX_ELEMENTS, 2**62),
    ],
)
def test_bounded_numel_stops_past_the_limit(
    shape: list[int], limit: int, numel: int | None
) -> None:
    assert bounded_numel(shape, limit) == numel


def test_brief_cuts_long_values_to_a_line() -> None:
    assert brief("short") == "'short'"
    assert brief("x" * 90) == "'" + "x" * 76 + "..."
    assert brief(list(range(8))) == "[0, 1, 2, 3, 4, 5, 6, 7]"
    assert brief(list(range(9))) == "[0, 1, 2, 3, 4, 5, 6, 7, ...]"
    assert brief(tuple(range(9))) == "[0, 1, 2, 3, 4, 5, 6, 7, ...]"
    assert brief({i: i for i in range(8)}) == "{0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 7: 7}"
    assert brief({i: i for i in range(9)}) == (
        "{0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 7: 7, ...}"
    )
    assert brief(["y" * 30] * 3) == "['" + "y" * 30 + "', '" + "y" * 30 + "', 'yyyyyyy..."
    assert len(brief(["y" * 30] * 3)) == 80
    assert brief("z" * 78) == "'" + "z" * 78 + "'"  # exactly 80 characters: kept whole


NESTED = (
    "header holds objects nested where none belong (a header is one object of tensor objects "
    "and a string-to-string metadata object)"
)
TENSOR = '{"dtype":"U8","shape":[1],"data_offsets":[0,1]}'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"__metadata__":{"k":"v"},"x":{}}', NESTED),
        ('{"__metadata__":{"k":{}}}', NESTED),
        (f'{{"a":{TENSOR},"a":{TENSOR}}}', "duplicate key 'a' in header"),
        ('{"__metadata__":{"k":"v","k":"w"}}', "duplicate key 'k' in header"),
        ("[1]", "header must be a JSON object of tensor objects"),
        ('"text"', "header must be a JSON object of tensor objects"),
        ('{"x":3}', "tensor 'x': expected an object with dtype/shape/data_offsets, got int"),
        ('{"x":[1]}', "tensor 'x': expected an object with dtype/shape/data_offsets, got list"),
        ('{"x":{}}', "tensor 'x': missing or non-string 'dtype'"),
        (f'{{"__metadata__":{{"a":{TENSOR}}}}}', "tensor objects nested where no tensor belongs"),
        (f'{{"__metadata__":{TENSOR}}}', "tensor objects nested where no tensor belongs"),
        (
            '{"x":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"e":[-1]}}',
            "tensor 'x': holds an array of something other than non-negative integers",
        ),
        (
            '{"x":{"shape":[2],"dtype":"U8","data_offsets":[0,1]}}',
            "tensor 'x': dtype U8 x shape [2] needs 2 bytes but data_offsets span 1",
        ),
        (
            f'{{"a":{TENSOR},"b":{{"dtype":"U8","shape":[-1],"data_offsets":[1,2]}},'
            '"c":{"dtype":"U8","shape":[-1],"data_offsets":[2,3]}}',
            "tensor 'b': 'shape' must be a list of non-negative integers, got [-1]",
        ),
        (
            '{"a":1',
            "header is not valid JSON (JSONDecodeError: Expecting ',' delimiter: line 1 column 7 "
            "(char 6)); the file is damaged or not a safetensors file",
        ),
        (
            '{"a":' * 100_000 + "1" + "}" * 100_000,
            "header JSON is nested too deeply to be a safetensors header; the file is damaged",
        ),
    ],
    ids=[
        "empty-object", "object-in-metadata", "duplicate-tensor", "duplicate-metadata", "array",
        "string", "number", "list", "empty-tensor", "tensor-in-metadata", "metadata-is-tensor",
        "extra-array", "field-order", "first-bad-named", "json", "deep",
    ],
)  # fmt: skip
def test_header_problems_are_said_whole(text: str, message: str) -> None:
    assert problem(text) == message


def test_metadata_alone_or_named_like_fields_is_metadata() -> None:
    assert parse('{"__metadata__":{"dtype":"x","shape":"y"}}')[1] == {"dtype": "x", "shape": "y"}
    assert parse("{}")[1] is None and len(parse("{}")[0]) == 0
    assert OBJECTS_LIMIT == 2


def test_large_headers_are_scanned_for_hostile_arrays_small_ones_are_not() -> None:
    hostile = '{"__metadata__":{"k":"v"},"x":[[]]}'
    scanned = (
        "header holds arrays of something other than integers, or is not a JSON object; a "
        "safetensors header's only arrays are shapes and data offsets"
    )
    # below the threshold the parse itself refuses it, naming the tensor
    small = hostile[:-1] + " " * (SCAN_CHARS - len(hostile)) + "}"
    assert len(small) == SCAN_CHARS
    assert (
        problem(small) == "tensor 'x': expected an object with dtype/shape/data_offsets, got list"
    )
    large = small[:-1] + " }"
    assert problem(large) == scanned
    assert problem(" " * SCAN_CHARS + "[1]") == scanned  # not an object
    fine = '{"__metadata__":{"k":"v, [x]"},' + " " * SCAN_CHARS + f'"t":{TENSOR}}}'
    assert list(parse(fine)[0]) == ["t"]


def test_metadata_whose_keys_are_the_tensor_fields_in_order_is_metadata() -> None:
    # found by the hostile header generator: it was taken for a tensor and refused
    text = '{"__metadata__":{"dtype":"F32","shape":"[2]","data_offsets":"[0,8]"}}'
    table, metadata = parse(text)
    assert len(table) == 0
    assert metadata == {"dtype": "F32", "shape": "[2]", "data_offsets": "[0,8]"}
    fake = '{"t":{"dtype":"F32","shape":"[2]","data_offsets":"[0,8]"}}'
    assert problem(fake) == "tensor 't': 'shape' must be a list of non-negative integers, got '[2]'"


def test_what_counts_as_an_object_in_a_finished_parse() -> None:
    columns = table_module._Columns(CODE_ITEMSIZE, MAX_ELEMENTS)
    for value in ({}, table_module._ROW, table_module._Bad("x"), columns):
        assert table_module._is_object(value), value
    for value in ([], "s", 1, None, table_module._Bad):
        assert not table_module._is_object(value), value


def test_an_object_in_a_tensor_field_is_nesting_not_a_tensor() -> None:
    assert problem('{"x":{"dtype":{}}}') == NESTED
    assert problem('{"x":[],"y":{"dtype":"U8","shape":{},"data_offsets":{}}}') == NESTED


def test_a_non_string_dtype_of_any_json_type_is_named() -> None:
    for dtype in ("[1]", "{}", "1", "null", "true"):
        text = f'{{"t":{{"dtype":{dtype},"shape":[1],"data_offsets":[0,1]}}}}'
        assert problem(text) == "tensor 't': missing or non-string 'dtype'", dtype


def test_the_duplicate_named_is_the_repeated_key() -> None:
    assert problem(f'{{"a":{TENSOR},"b":{TENSOR},"b":{TENSOR}}}') == "duplicate key 'b' in header"


def test_brief_keeps_a_79_character_string_only_when_its_repr_fits() -> None:
    assert brief("z" * 79) == "'" + "z" * 76 + "..."


def test_a_large_header_may_open_with_whitespace() -> None:
    text = " \n" + f'{{"t":{TENSOR}}}' + " " * SCAN_CHARS
    assert list(parse(text)[0]) == ["t"]


def test_running_out_of_memory_while_parsing_is_said(monkeypatch: pytest.MonkeyPatch) -> None:
    exhausted = MemoryError()

    def loads(*args: object, **kwargs: object) -> Any:
        raise exhausted

    monkeypatch.setattr(table_module.json, "loads", loads)
    with pytest.raises(HeaderProblem) as caught:
        parse("{}" + " " * 1000)
    assert str(caught.value) == (
        "parsing the 1,002-character header ran out of memory; it is hostile or larger than "
        "this process can hold"
    )
    assert caught.value.__cause__ is exhausted


def test_given_rows_are_trusted_and_the_fast_path_passes_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    table = TensorTable(["a"], ["U8"], [(1,)], array("q", [0]), array("q", [1]), {"a": 0, "b": 0})
    assert "b" in table and table.row("b") == 0  # not rebuilt from the names
    built: list[dict[str, int] | None] = []

    class Recording(TensorTable):
        def __init__(self, *args: Any) -> None:
            built.append(args[5] if len(args) > 5 else None)
            super().__init__(*args)

    monkeypatch.setattr(table_module, "TensorTable", Recording)
    parse(f'{{"a":{TENSOR}}}')
    assert built == [{"a": 0}]
