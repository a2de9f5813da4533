"""box_runs against torch's own slicing: the runs, read back to back, are the box."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from statevault.dcp.byte_ranges import box_runs


@st.composite
def boxes(draw: st.DrawFn) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    shape = tuple(draw(st.lists(st.integers(0, 5), min_size=0, max_size=4)))
    offsets = tuple(draw(st.integers(0, size)) for size in shape)
    lengths = tuple(draw(st.integers(0, size - o)) for size, o in zip(shape, offsets, strict=True))
    return shape, offsets, lengths


@settings(max_examples=300, deadline=None)
@given(boxes(), st.sampled_from([torch.uint8, torch.float32, torch.float64]))
def test_runs_read_back_to_back_are_the_box(box: tuple, dtype: torch.dtype) -> None:
    shape, offsets, lengths = box
    chunk = torch.arange(max(1, torch.Size(shape).numel()), dtype=dtype)[
        : torch.Size(shape).numel()
    ]
    chunk = chunk.reshape(shape)
    raw = chunk.contiguous().reshape(-1).view(torch.uint8)
    got = b"".join(
        bytes(raw[start : start + n].tolist())
        for start, n in box_runs(shape, dtype.itemsize, offsets, lengths)
    )
    expected = chunk
    for dim, (o, n) in enumerate(zip(offsets, lengths, strict=True)):
        expected = expected.narrow(dim, o, n)
    assert got == bytes(expected.contiguous().reshape(-1).view(torch.uint8).tolist())


def test_whole_rows_are_one_run_and_columns_one_per_row() -> None:
    assert box_runs((6, 4), 4, (2, 0), (3, 4)) == [(32, 48)]
    assert box_runs((3, 4), 4, (0, 1), (3, 2)) == [(4, 8), (20, 8), (36, 8)]


def test_a_box_outside_the_chunk_is_refused() -> None:
    with pytest.raises(ValueError, match="outside the chunk"):
        box_runs((3, 4), 4, (2, 0), (2, 4))
