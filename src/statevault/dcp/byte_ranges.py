"""Which bytes of a stored chunk hold a requested box of it: pure arithmetic, no I/O.

A chunk is stored C-contiguous. A box inside it (``offsets`` + ``lengths`` per dim) is a
set of runs of consecutive bytes: the innermost dims the box covers in full join into one
run with the first dim it cuts, so a box of whole rows (what resharding along dim 0 asks
for) is one run, and a box of columns is one run per row. The runs come in the box's own
C order, so reading them back to back fills a contiguous tensor of the box's shape.
May be imported by anything in ``statevault.dcp``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

Run = tuple[int, int]  # (byte offset in the chunk, byte count)


def box_runs(
    shape: Sequence[int], itemsize: int, offsets: Sequence[int], lengths: Sequence[int]
) -> list[Run]:
    """The runs of bytes that hold the box, in order; adjacent runs are merged."""
    if len(offsets) != len(shape) or len(lengths) != len(shape):
        raise ValueError(f"box of {len(offsets)} dims for a chunk of {len(shape)} dims")
    for dim, (o, n, size) in enumerate(zip(offsets, lengths, shape, strict=True)):
        if o < 0 or n < 0 or o + n > size:
            raise ValueError(
                f"box {offsets}+{lengths} outside the chunk {tuple(shape)} (dim {dim})"
            )
    if any(n == 0 for n in lengths):
        return []
    strides = [itemsize] * len(shape)  # bytes per step along each dim
    for dim in range(len(shape) - 2, -1, -1):
        strides[dim] = strides[dim + 1] * shape[dim + 1]
    # the first dim from which on everything inside is taken whole
    cut = len(shape)
    while cut > 0 and offsets[cut - 1] == 0 and lengths[cut - 1] == shape[cut - 1]:
        cut -= 1
    if cut == 0:
        total = itemsize
        for size in shape:
            total *= size
        return [(0, total)]
    run = lengths[cut - 1] * strides[cut - 1]
    inner_start = offsets[cut - 1] * strides[cut - 1]
    runs: list[Run] = []
    outer = [range(offsets[d], offsets[d] + lengths[d]) for d in range(cut - 1)]
    for index in itertools.product(*outer):
        start = inner_start + sum(i * strides[d] for d, i in enumerate(index))
        if runs and runs[-1][0] + runs[-1][1] == start:
            runs[-1] = (runs[-1][0], runs[-1][1] + run)
        else:
            runs.append((start, run))
    return runs
