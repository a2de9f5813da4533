"""diff(): compare two checkpoints key by key and number by number, in bounded memory.

This module compares what the headers say (keys only on one side, shape and dtype changes)
and the non-tensor state (epoch, hyper-parameters; user metadata is not compared), then hands
the tensors present on both sides with one shape to ``diff_streams``, which reads and compares
their values (``diff_values`` holds the arithmetic, ``diff_report`` the result). May be
imported by: the public package.
"""

from __future__ import annotations

import math
import os
from typing import Any

from statevault.engine.fsspec_storage import StorageOptions
from statevault.engine.progress import Progress
from statevault.readers.base import Checkpoint
from statevault.tools.arguments import checkpoint_source, tolerance
from statevault.tools.diff_report import DiffReport
from statevault.tools.diff_streams import compare_values
from statevault.tools.inspection import state_leaves


def _same_value(x: Any, y: Any) -> bool:
    if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
        return True
    return type(x) is type(y) and bool(x == y)


def _state_changes(a: Checkpoint, b: Checkpoint) -> list[tuple[str, Any, Any]]:
    left, right = state_leaves(a.tree), state_leaves(b.tree)
    missing = "<absent>"
    changes = []
    for path in [*left, *(p for p in right if p not in left)]:
        va, vb = left.get(path, missing), right.get(path, missing)
        if not _same_value(va, vb):
            changes.append((path, va, vb))
    return changes


def _compare(
    a: Checkpoint,
    b: Checkpoint,
    *,
    atol: float = 0.0,
    rtol: float = 0.0,
    progress: Progress | None = None,
    threads: int | None = None,
) -> DiffReport:
    """Diff two opened inputs (see :func:`diff`)."""
    keys_a, keys_b = a.keys(), b.keys()
    set_a, set_b = set(keys_a), set(keys_b)
    shapes: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = []
    dtypes: list[tuple[str, str, str]] = []
    todo: dict[tuple[str, str], str] = {}
    for name in keys_a:
        if name not in set_b:
            continue
        meta_a, meta_b = a.resolve(name), b.resolve(name)
        if meta_a.shape != meta_b.shape:
            shapes.append((name, meta_a.shape, meta_b.shape))
            continue
        if meta_a.dtype != meta_b.dtype:
            dtypes.append((name, meta_a.dtype_name, meta_b.dtype_name))
        # tied on both sides: the same bytes give the same answer, compare them once
        todo.setdefault((meta_a.name, meta_b.name), name)
    if progress is not None:
        progress.start(sum(a.tensors[stored].nbytes for stored, _ in todo))
    deltas = compare_values(a, b, list(todo.values()), atol, rtol, progress, threads)
    return DiffReport(
        a=a.label,
        b=b.label,
        atol=atol,
        rtol=rtol,
        only_a=tuple(k for k in keys_a if k not in set_b),
        only_b=tuple(k for k in keys_b if k not in set_a),
        shape_changes=tuple(shapes),
        dtype_changes=tuple(dtypes),
        tensors=tuple(deltas),
        state_changes=tuple(_state_changes(a, b)),
    )


def diff(
    a: str | os.PathLike[str],
    b: str | os.PathLike[str],
    *,
    atol: float = 0.0,
    rtol: float = 0.0,
    progress: Progress | None = None,
    storage_options: StorageOptions | None = None,
) -> DiffReport:
    """Compare two checkpoints of any supported kind (statevault, safetensors, .pt, sharded).

    ``report.ok`` is True when nothing differs beyond ``|a - b| <= atol + rtol * |b|``.

    Checksums are verified while reading, so a damaged file raises
    :class:`ChecksumMismatchError` rather than showing up as a numeric difference. Either
    may be a URL (``s3://...``); ``storage_options`` (passed to fsspec) serves each URL.

    Example::

        report = statevault.diff("step1000.safetensors", "step2000.safetensors", atol=1e-6)
        print(report.ok, [t.name for t in report.different])
    """
    atol, rtol = tolerance(atol, argument="atol"), tolerance(rtol, argument="rtol")
    path_a, path_b = checkpoint_source(a, argument="a"), checkpoint_source(b, argument="b")
    options_a = storage_options if isinstance(path_a, str) else None
    options_b = storage_options if isinstance(path_b, str) else None
    with (
        Checkpoint(path_a, storage_options=options_a) as left,
        Checkpoint(path_b, storage_options=options_b) as right,
    ):
        return _compare(left, right, atol=atol, rtol=rtol, progress=progress)
