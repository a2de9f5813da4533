"""The safetensors container: header bytes <-> validated tensor table. Pure, no I/O.

Layout of a file (little-endian)::

    [8 bytes: N = header length] [N bytes: JSON header, space padded] [data section]

The header maps tensor names to ``{"dtype", "shape", "data_offsets"}`` (offsets relative to
the data section) plus an optional ``"__metadata__"`` string->string map, where statevault
keeps its own JSON. Everything read from a file is validated before it is trusted, so a
hostile header cannot make us allocate, read or seek outside what the file really holds.

May import: ``statevault.errors``, ``fileformat.dtypes``, ``fileformat.table``. Imported by:
``metadata``, ``format1``, the engine (reads the header), readers and saving.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from statevault.errors import HeaderError, TruncatedFileError
from statevault.fileformat.dtypes import CODE_ITEMSIZE, LAYOUT_RANK
from statevault.fileformat.table import (
    HeaderProblem,
    TensorEntry,
    TensorTable,
    brief,
    first_misplaced,
    parse_columns,
)

PREFIX_BYTES = 8
MAX_HEADER_BYTES = 100_000_000  # the reference implementation's cap
METADATA_KEY = "__metadata__"
MAX_ELEMENTS = 2**63 - 1  # torch indexes elements with int64


@dataclass(frozen=True)
class Header:
    """A validated header: tensors in file order, raw metadata, where the data begins."""

    entries: TensorTable
    metadata: Mapping[str, str]
    data_offset: int
    data_size: int


def plan_layout(items: Iterable[tuple[str, str, tuple[int, ...], int]]) -> list[TensorEntry]:
    """Assign offsets to ``(name, code, shape, nbytes)`` items in the reference order.

    Larger element types come first (then names), which keeps every tensor aligned to its
    element size and reproduces the reference implementation's byte layout exactly.
    """
    ordered = sorted(items, key=lambda item: (LAYOUT_RANK[item[1]], item[0]))
    entries: list[TensorEntry] = []
    # Equal shapes share one tuple: most tensors of a large state repeat a few shapes.
    shapes: dict[tuple[int, ...], tuple[int, ...]] = {}
    offset = 0
    for name, code, shape, nbytes in ordered:
        plain = tuple(shape)
        entries.append(
            TensorEntry(name, code, shapes.setdefault(plain, plain), offset, offset + nbytes)
        )
        offset += nbytes
    return entries


def quoted(name: str) -> str:
    """``json.dumps(name, ensure_ascii=False)``, skipped for the common names that need no
    escaping (json.dumps escapes only quotes, backslashes and control characters)."""
    if name.isprintable() and '"' not in name and "\\" not in name:
        return f'"{name}"'
    return json.dumps(name, ensure_ascii=False)


def tensor_table(entries: Iterable[TensorEntry], *, canonical: bool = False) -> str:
    """The ``"name":{...}`` members of the header's tensor table, as json.dumps writes them.

    Written by hand because building 20,000 dicts for json.dumps costs more than saving the
    tensors; shapes repeat, so each distinct one is formatted once. ``canonical`` orders the
    fields alphabetically (for the header digest); entries are written in the given order.
    """
    shape_texts: dict[tuple[int, ...], str] = {}

    def shape_text(shape: tuple[int, ...]) -> str:
        text = shape_texts.get(shape)
        if text is None:
            text = shape_texts[shape] = ",".join(map(str, shape))
        return text

    if canonical:
        return ",".join(
            [
                f'{quoted(name)}:{{"data_offsets":[{start},{end}],'
                f'"dtype":"{code}","shape":[{shape_text(shape)}]}}'
                for name, code, shape, start, end in entries
            ]
        )
    return ",".join(
        [
            f'{quoted(name)}:{{"dtype":"{code}","shape":[{shape_text(shape)}],'
            f'"data_offsets":[{start},{end}]}}'
            for name, code, shape, start, end in entries
        ]
    )


TABLE_CHUNK = 1024  # tensor entries encoded per piece: no megabyte-long intermediate text


def tensor_table_pieces(
    entries: Sequence[TensorEntry], *, canonical: bool = False
) -> Iterator[str]:
    """:func:`tensor_table` of ``entries``, ``TABLE_CHUNK`` entries per piece (join with ",")."""
    for start in range(0, len(entries), TABLE_CHUNK):
        yield tensor_table(entries[start : start + TABLE_CHUNK], canonical=canonical)


def encode_header(entries: Sequence[TensorEntry], metadata: Mapping[str, str] | None) -> bytearray:
    """The 8-byte prefix plus the space-padded JSON header for ``entries``: the one encoder.

    ``metadata`` comes first, in its own order, as ``json.dumps`` writes it; then the tensor
    table in the given (data) order. Saves call it too (``metadata.SlottedHeader``) and fill
    digests into the bytes afterwards, so the result is a bytearray they can write into.
    """
    data = bytearray(PREFIX_BYTES)
    data += b"{"
    if metadata:
        data += f'"{METADATA_KEY}":'.encode()
        data += json.dumps(dict(metadata), separators=(",", ":"), ensure_ascii=False).encode()
    for index, piece in enumerate(tensor_table_pieces(entries)):
        if metadata or index:
            data += b","
        data += piece.encode("utf-8")
    data += b"}"
    data += b" " * (-(len(data) - PREFIX_BYTES) % 8)
    data[:PREFIX_BYTES] = struct.pack("<Q", len(data) - PREFIX_BYTES)
    return data


def first_metadata_value_at(metadata: Mapping[str, str]) -> int:
    """Where, in :func:`encode_header` ``(entries, metadata)``'s bytes, the text of the first
    metadata value begins (just after its opening quote).

    Derived from the layout ``encode_header`` writes, so a caller can find a slot inside that
    value from the length of the escaped text before it, never by searching the bytes.
    """
    key = json.dumps(next(iter(metadata)), ensure_ascii=False)
    return PREFIX_BYTES + len(f'{{"{METADATA_KEY}":{{{key}:"'.encode())


NOT_SAFETENSORS = "not a safetensors file (its first 8 bytes are not a plausible header length)"


def header_length(prefix: bytes, *, file_size: int, source: str) -> int:
    """Validate the 8-byte prefix and return N, the header's length in bytes.

    ``prefix`` may carry the byte after the prefix too: a header always opens with ``{``,
    which tells a truncated checkpoint from some other file. The length is echoed only
    then; decoded from any other file it would quote that file's first bytes as a number.
    """
    if file_size < PREFIX_BYTES or len(prefix) < PREFIX_BYTES:
        raise TruncatedFileError(
            f"{source}: file is {file_size} bytes, too short to be a safetensors file "
            f"(needs at least {PREFIX_BYTES}); it was probably truncated or is not a checkpoint"
        )
    (length,) = struct.unpack("<Q", prefix[:PREFIX_BYTES])
    opens_json = prefix[PREFIX_BYTES : PREFIX_BYTES + 1] in (b"{", b"")
    if length > MAX_HEADER_BYTES or length < 2 or not opens_json:
        raise HeaderError(f"{source}: {NOT_SAFETENSORS}; the file is damaged or not a checkpoint")
    if PREFIX_BYTES + length > file_size:
        raise TruncatedFileError(
            f"{source}: header needs {length} bytes but the file holds only "
            f"{file_size - PREFIX_BYTES} after the prefix; the file is truncated or damaged"
        )
    return int(length)


def parse_header(raw: bytes, *, file_size: int, source: str) -> Header:
    """Parse and validate header bytes (without the prefix) against the file's size.

    Checks: UTF-8 JSON object, unique names, string->string metadata, known dtype codes,
    dtype x shape == byte span, offsets contiguous from 0 with no gap or overlap, and the
    data section's size equal to what remains of the file. One pass of the column-wise
    parser (``_table``) does it all; its errors name the tensor and field at fault.
    """
    return parse_header_text(
        header_text(raw, source=source), header_bytes=len(raw), file_size=file_size, source=source
    )


def header_text(raw: bytes, *, source: str) -> str:
    """The header bytes as text. A reader that drops ``raw`` before parsing keeps one copy
    of a megabytes-long header alive instead of two."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        # not ``exc`` itself: its message quotes the offending byte of a file we cannot trust
        raise HeaderError(
            f"{source}: header is not valid UTF-8 (at byte {exc.start} of the header); the "
            "file is damaged or not a safetensors file"
        ) from None


def parse_header_text(text: str, *, header_bytes: int, file_size: int, source: str) -> Header:
    """:func:`parse_header` of :func:`header_text`, ``header_bytes`` long in the file."""
    try:
        table, metadata = parse_columns(
            text, itemsizes=CODE_ITEMSIZE, max_elements=MAX_ELEMENTS, metadata_key=METADATA_KEY
        )
    except HeaderProblem as exc:
        raise HeaderError(f"{source}: {exc}; the header is damaged") from None
    misplaced = first_misplaced(table)
    if misplaced is not None:
        start = table.starts[misplaced]
        expected = table.ends[misplaced - 1] if misplaced else 0
        problem = "overlaps the previous tensor" if start < expected else "leaves a gap"
        raise HeaderError(
            f"{source}: tensor {table.names[misplaced]!r} starts at data offset {start}, "
            f"expected {expected}: it {problem}; the header is damaged"
        )
    position = table.ends[-1] if table.ends else 0
    if metadata is None:
        metadata = {}
    if type(metadata) is not dict:
        raise HeaderError(
            f"{source}: '{METADATA_KEY}' must map strings to strings, got a "
            f"{type(metadata).__name__}; the header is damaged"
        )
    for key, value in metadata.items():
        if not isinstance(value, str):
            raise HeaderError(
                f"{source}: '{METADATA_KEY}' must map strings to strings, but {brief(key)} "
                f"maps to {brief(value)}; the header is damaged"
            )
    data_offset = PREFIX_BYTES + header_bytes
    available = file_size - data_offset
    if available < position:
        cut = next(
            name for name, end in zip(table.names, table.ends, strict=True) if end > available
        )
        count = sum(1 for end in table.ends if end > available)
        raise TruncatedFileError(
            f"{source}: file is truncated: data section needs {position} bytes, found "
            f"{available}; {count} tensor(s) cut off, first {cut!r}"
        )
    if available > position:
        raise HeaderError(
            f"{source}: {available - position} unexpected trailing bytes after the last tensor "
            f"(data section should be {position} bytes); the file is damaged"
        )
    return Header(table, metadata, data_offset, position)
