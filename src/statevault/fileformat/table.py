"""A header's tensor table, stored column-wise, and the fast parser that builds it.

A 20,000-tensor header parsed the plain way (``json.loads``, then one validated record per
tensor) costs ~80 ms and ~15 MiB of short-lived Python objects, for a file whose tensor data
loads in a fraction of that. Here each tensor's JSON object is validated and appended to a few
columns the moment the JSON parser finishes it, so per-tensor dicts and lists never pile up,
and what stays alive is a name list, a name -> row dict and flat columns (~3 MiB). Equal
shapes share one tuple.

It is the only parser: anything unusual is checked in the same pass and refused with a
message naming the tensor and field, never parsed a second time. A header is at most 100 MB
of text, so what a hostile one costs is bounded by what one pass over it costs.

The module is a little over 400 lines because the table, the hook that fills it and the
pre-parse scan are one single-pass algorithm; split, each piece would only make sense read
next to the others.

May import: nothing of statevault (stdlib only; ``container`` adds the file's name to its
errors). Imported by: ``container`` and, for ``TensorEntry``/``TensorTable``, the layers above.
"""

from __future__ import annotations

import itertools
import json
import re
from array import array
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple


class TensorEntry(NamedTuple):
    """One tensor as laid out in the data section.

    A NamedTuple rather than a frozen dataclass because saving builds one per tensor: for
    20,000 tensors that is 4 ms instead of 10 ms. Loading makes them only on demand.
    """

    name: str
    code: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    def to_json(self) -> dict[str, Any]:
        return {
            "dtype": self.code,
            "shape": list(self.shape),
            "data_offsets": [self.start, self.end],
        }


class TensorTable(Mapping[str, TensorEntry]):
    """Tensors in file (data offset) order; ``table[name]`` makes a :class:`TensorEntry`.

    ``row(name)`` and the columns serve the hot paths that must not build an object per tensor.
    """

    __slots__ = ("_rows", "codes", "ends", "names", "shapes", "starts")

    def __init__(
        self,
        names: list[str],
        codes: list[str],
        shapes: list[tuple[int, ...]],
        starts: array[int],
        ends: array[int],
        rows: dict[str, int] | None = None,
    ) -> None:
        self.names = names
        self.codes = codes
        self.shapes = shapes
        self.starts = starts
        self.ends = ends
        self._rows = {name: row for row, name in enumerate(names)} if rows is None else rows

    @classmethod
    def from_entries(cls, entries: Sequence[TensorEntry]) -> TensorTable:
        """A table of ``entries``, which must already be in data offset order."""
        shared: dict[tuple[int, ...], tuple[int, ...]] = {}
        return cls(
            [e.name for e in entries],
            [e.code for e in entries],
            [shared.setdefault(e.shape, e.shape) for e in entries],
            array("q", [e.start for e in entries]),
            array("q", [e.end for e in entries]),
        )

    def row(self, name: str) -> int:
        return self._rows[name]

    def entry(self, row: int) -> TensorEntry:
        return TensorEntry(
            self.names[row], self.codes[row], self.shapes[row], self.starts[row], self.ends[row]
        )

    def __getitem__(self, name: str) -> TensorEntry:
        return self.entry(self._rows[name])

    def __contains__(self, name: object) -> bool:
        return name in self._rows

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"TensorTable({len(self.names)} tensors)"


_ENTRY_KEYS = ("dtype", "shape", "data_offsets")
_ROW = object()  # stands, in the parse result, for a tensor object that became a row
OBJECTS_LIMIT = 2  # objects a valid header holds besides its tensors: metadata and itself


class _Bad:
    """Stands for a malformed tensor object; the first one keeps its problem, the rest share
    one marker, so a header of a million bad entries costs no more than a good one."""

    __slots__ = ("problem",)

    def __init__(self, problem: str) -> None:
        self.problem = problem


_ANOTHER_BAD = _Bad("malformed (see the first malformed tensor)")


def entry_problem(
    code: Any, shape: Any, offsets: Any, itemsizes: Mapping[str, int], max_elements: int
) -> str | None:
    """What is wrong with one tensor's fields, or None; the message omits the tensor's name."""
    if not isinstance(code, str):
        return "missing or non-string 'dtype'"
    if code not in itemsizes:
        return (
            f"dtype code {code!r} is not supported by this statevault version "
            f"(known: {', '.join(sorted(itemsizes))})"
        )
    if type(shape) is not list or not all(type(d) is int and d >= 0 for d in shape):
        return f"'shape' must be a list of non-negative integers, got {brief(shape)}"
    numel = bounded_numel(shape, max_elements)
    if numel is None:
        return f"shape {brief(shape)} is too large for a torch tensor"
    if (
        type(offsets) is not list
        or len(offsets) != 2
        or not all(type(o) is int and o >= 0 for o in offsets)
        or offsets[0] > offsets[1]
    ):
        return f"'data_offsets' must be [begin, end] with 0 <= begin <= end, got {brief(offsets)}"
    expected = numel * itemsizes[code]
    if expected != offsets[1] - offsets[0]:
        return (
            f"dtype {code} x shape {brief(shape)} needs {expected} bytes but data_offsets "
            f"span {offsets[1] - offsets[0]}"
        )
    if offsets[1] > max_elements:
        return f"data_offsets {brief(offsets)} end beyond 2**63 - 1, past any file's end"
    return None


def bounded_numel(shape: Sequence[int], limit: int) -> int | None:
    """The element count of a shape of non-negative ints, or None when the product of its
    non-zero dims exceeds ``limit``.

    torch sizes and strides are int64, and an empty tensor (a 0 in its shape) passes the byte
    check with any other dims, so those are bounded too. The product stops at the bound:
    multiplying out a hostile shape of millions of large dims is quadratic bigint work.
    """
    bound = 1
    for dim in shape:
        if dim > 1:
            bound *= dim
            if bound > limit:
                return None
    return 0 if 0 in shape else bound


def brief(value: Any) -> str:
    """``repr(value)`` cut to a line, without a full repr (or copy) of a hostile value that
    may be a list of millions or a string of megabytes."""
    if isinstance(value, str) and len(value) > 80:
        text = repr(value[:80])
    elif isinstance(value, dict) and len(value) > 8:
        text = repr(dict(itertools.islice(value.items(), 8)))[:-1] + ", ...}"
    elif isinstance(value, (list, tuple)) and len(value) > 8:
        text = repr(list(value[:8]))[:-1] + ", ...]"
    else:
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class HeaderProblem(Exception):
    """The header is malformed; the message says how (the caller adds the file's name)."""


class _Columns:
    """``object_pairs_hook`` state: the whole header checked in the one ``json.loads`` pass.

    Each tensor object is checked and appended to the columns the moment the JSON parser
    finishes it, and replaced in the parse result by the shared ``_ROW`` marker (a bad one
    by a :class:`_Bad`), so per-tensor dicts never pile up. Any other object is the
    metadata or the header itself: a third one means objects nested where none belong,
    refused at once, so a hostile header of millions of ``{}`` costs nothing to refuse.
    """

    def __init__(self, itemsizes: Mapping[str, int], max_elements: int) -> None:
        self.itemsizes = itemsizes
        self.max_elements = max_elements
        self.codes: list[str] = []
        self.shapes: list[tuple[int, ...]] = []
        self.starts = array("q")
        self.ends = array("q")
        self._known: dict[tuple[int, ...], tuple[tuple[int, ...], int]] = {}
        self.first_bad: _Bad | None = None
        self.objects = 0
        self.names: list[str] | None = None
        self.others: list[tuple[str, Any]] = []

    def _shape(self, shape: list[Any]) -> tuple[tuple[int, ...], int] | None:
        """The shared tuple and element count of a valid shape, else None."""
        key = tuple(shape)
        # every time, not only when caching: (2, True) and (2, 1.0) are equal to (2, 1)
        if not all(type(d) is int for d in key):
            return None
        known = self._known.get(key)
        if known is None:
            if not all(d >= 0 for d in key):
                return None
            numel = bounded_numel(key, self.max_elements)
            if numel is None:
                return None
            known = self._known[key] = (key, numel)
        return known

    def _row(self, code: Any, shape: Any, offsets: Any) -> Any:
        """Append one tensor (``_ROW``), or a :class:`_Bad` saying what is wrong with it."""
        itemsize = self.itemsizes.get(code) if type(code) is str else None
        if itemsize is not None and type(shape) is list and type(offsets) is list:
            known = self._shape(shape)
            if known is not None and len(offsets) == 2:
                start, end = offsets
                if (
                    type(start) is int
                    and type(end) is int
                    and 0 <= start <= end <= self.max_elements
                    and end - start == known[1] * itemsize
                ):
                    self.codes.append(code)
                    self.shapes.append(known[0])
                    self.starts.append(start)
                    self.ends.append(end)
                    return _ROW
        return self._bad(entry_problem(code, shape, offsets, self.itemsizes, self.max_elements))

    def _bad(self, problem: str | None) -> _Bad:
        if self.first_bad is not None:
            return _ANOTHER_BAD
        self.first_bad = _Bad(problem or "malformed")
        return self.first_bad

    def _count_object(self) -> None:
        self.objects += 1
        if self.objects > OBJECTS_LIMIT:
            raise HeaderProblem(
                "header holds objects nested where none belong (a header is one object of "
                "tensor objects and a string-to-string metadata object)"
            )

    def hook(self, pairs: list[tuple[str, Any]]) -> Any:
        if (
            len(pairs) == 3
            and (pairs[0][0], pairs[1][0], pairs[2][0]) == _ENTRY_KEYS
            and type(pairs[1][1]) is list  # else it may be metadata with keys named so
        ):
            return self._row(pairs[0][1], pairs[1][1], pairs[2][1])  # the common case
        table = dict(pairs)
        if len(table) != len(pairs):
            seen: set[str] = set()
            for key, _ in pairs:
                if key in seen:
                    raise HeaderProblem(f"duplicate key {brief(key)} in header")
                seen.add(key)
        if any(value is _ROW or type(value) is _Bad for _, value in pairs):
            # the header object itself: keep names in row order, not a dict of a million
            self._count_object()
            self.names = [key for key, value in pairs if value is _ROW]
            self.others = [(key, value) for key, value in pairs if value is not _ROW]
            return self
        if any(key in table and not _is_object(table[key]) for key in _ENTRY_KEYS) and not all(
            type(value) is str
            for value in table.values()  # metadata may have a "dtype" key
        ):
            # a tensor in another field order, or with extra fields (ignored, as safetensors
            # does, unless they hold arrays of other than non-negative integers, which no
            # header holds: the scan of large headers refuses those before the parse)
            if any(type(v) is list and not _offsets_like(v) for v in table.values()):
                return self._bad("holds an array of something other than non-negative integers")
            return self._row(table.get("dtype"), table.get("shape"), table.get("data_offsets"))
        self._count_object()
        return table


# What a safetensors header can hold, scanned before the parse: any text, strings, commas
# not followed by a container, and arrays of non-negative integers (shapes and data offsets
# are its only arrays). Where the match stops, there is an array holding something else:
# JSON's arrays get no hook, so ``[[],[],...]`` would otherwise cost ~20x its size in lists.
# Possessive quantifiers: no backtracking, one linear pass in C, no copy of the text.
_HEADER_TEXT = re.compile(
    r'(?:[^"\[,]++|"[^"\\]*+(?:\\.[^"\\]*+)*+"|,(?!\s*[\[{])|\[[\d\s,]*+\])*+'
)
SCAN_CHARS = 8 << 20  # headers above this are scanned first (20,000 tensors: ~3 MB)


def _refuse_hostile_arrays(text: str) -> None:
    """Refuse, before parsing, a large header whose arrays hold anything but integers.

    Only large headers pay for the scan (a fraction of the parse's own time); below
    ``SCAN_CHARS`` the worst case is bounded anyway. Whatever it refuses, the parse refuses
    too (after building it all), so a header's fate does not depend on its size.
    """
    if len(text) <= SCAN_CHARS:
        return
    scanned = _HEADER_TEXT.match(text)
    if scanned is None or scanned.end() != len(text) or text.lstrip()[:1] != "{":
        raise HeaderProblem(
            "header holds arrays of something other than integers, or is not a JSON object; "
            "a safetensors header's only arrays are shapes and data offsets"
        )


def _offsets_like(values: list[Any]) -> bool:
    return all(type(v) is int and v >= 0 for v in values)


def _is_object(value: Any) -> bool:
    """Whether ``value`` stands for a JSON object in a finished parse of the hook."""
    return type(value) is dict or value is _ROW or type(value) is _Bad or type(value) is _Columns


def parse_columns(
    text: str, *, itemsizes: Mapping[str, int], max_elements: int, metadata_key: str
) -> tuple[TensorTable, Any]:
    """The tensor table (in data order) and the metadata value (None when absent).

    One ``json.loads`` pass checks everything per tensor (dtype code, shape, byte span,
    unique names); offsets tiling the data section is :func:`first_misplaced`'s check and
    the file's size the caller's. Raises :class:`HeaderProblem` naming what is wrong.
    """
    _refuse_hostile_arrays(text)
    columns = _Columns(itemsizes, max_elements)
    try:
        top = json.loads(text, object_pairs_hook=columns.hook)
    except HeaderProblem:
        raise
    except (ValueError, OverflowError) as exc:
        raise HeaderProblem(
            f"header is not valid JSON ({type(exc).__name__}: {exc}); the file is damaged or "
            "not a safetensors file"
        ) from None
    except RecursionError:
        raise HeaderProblem(
            "header JSON is nested too deeply to be a safetensors header; the file is damaged"
        ) from None
    except MemoryError as exc:  # a bounded header whose JSON builds up past this process's memory
        raise HeaderProblem(
            f"parsing the {len(text):,}-character header ran out of memory; it is hostile or "
            "larger than this process can hold"
        ) from exc
    if top is columns:
        names, others = columns.names, columns.others
        assert names is not None  # set together with ``others``
    elif type(top) is dict:
        names, others = [], list(top.items())
    else:
        raise HeaderProblem("header must be a JSON object of tensor objects")
    metadata = _metadata_among(others, columns, metadata_key)
    if len(names) != len(columns.codes) or metadata_key in names:
        raise HeaderProblem("tensor objects nested where no tensor belongs")
    rows = {name: row for row, name in enumerate(names)}
    assert len(rows) == len(names)  # duplicates were refused by the hook
    starts, ends = columns.starts, columns.ends
    if not (starts[:1] in (array("q"), array("q", [0])) and starts[1:] == ends[:-1]):
        order = sorted(range(len(names)), key=lambda row: (starts[row], ends[row]))
        names = [names[i] for i in order]
        table = TensorTable(
            names,
            [columns.codes[i] for i in order],
            [columns.shapes[i] for i in order],
            array("q", [starts[i] for i in order]),
            array("q", [ends[i] for i in order]),
        )
        return table, metadata
    return TensorTable(names, columns.codes, columns.shapes, starts, ends, rows), metadata


def _metadata_among(others: list[tuple[str, Any]], columns: _Columns, metadata_key: str) -> Any:
    """The metadata value among the header's members that did not become rows (None when
    absent); any other such member is a tensor at fault, refused naming it and the fault."""
    metadata = None
    for key, value in others:
        if key == metadata_key:
            metadata = value
        elif type(value) is _Bad:
            raise HeaderProblem(f"tensor {brief(key)}: {value.problem}")
        elif type(value) is dict:
            code, shape, offsets = (value.get(field) for field in _ENTRY_KEYS)
            problem = entry_problem(code, shape, offsets, columns.itemsizes, columns.max_elements)
            raise HeaderProblem(f"tensor {brief(key)}: {problem or 'tensor object misplaced'}")
        else:
            raise HeaderProblem(
                f"tensor {brief(key)}: expected an object with dtype/shape/data_offsets, got "
                f"{type(value).__name__}"
            )
    return metadata


def first_misplaced(table: TensorTable) -> int | None:
    """The first row (in data order) that does not start where the previous one ends."""
    starts, ends = table.starts, table.ends
    if starts[:1] in (array("q"), array("q", [0])) and starts[1:] == ends[:-1]:
        return None  # the common case, compared in C
    position = 0
    for row, start in enumerate(starts):
        if start != position:
            return row
        position = ends[row]
    return None
