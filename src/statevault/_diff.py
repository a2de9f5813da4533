"""diff(): compare two checkpoints key by key and number by number, in bounded memory.

Both sides are streamed in chunks of ``CHUNK_ELEMENTS`` elements, so peak memory is a few
chunk-sized temporaries (tens of MB) whatever the tensor sizes. Values are compared in
float64 (complex128 for complex tensors) with ``torch.isclose`` semantics,
``|a - b| <= atol + rtol * |b|``; NaNs in the same place count as equal. Dtypes with no
arithmetic in torch (``float4_e2m1fn_x2``) are compared bit for bit. Non-tensor state (epoch,
hyper-parameters) is compared too; user metadata is not.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from statevault._display import shown, shown_value
from statevault._foreign import Input, open_input
from statevault._inspect import state_leaves
from statevault._progress import Progress
from statevault._report import MAX_LISTED

CHUNK_ELEMENTS = 1 << 20
_NO_ARITHMETIC = frozenset(
    dt for dt in (getattr(torch, "float4_e2m1fn_x2", None),) if isinstance(dt, torch.dtype)
)


@dataclass(frozen=True)
class TensorDelta:
    """How one tensor present in both files, with the same shape, differs."""

    name: str
    shape: tuple[int, ...]
    dtype_a: str
    dtype_b: str
    mismatched: int  # elements outside the tolerance
    max_abs: float | None  # None when compared bit for bit
    rel_l2: float | None  # ||a - b|| / ||b||

    @property
    def equal(self) -> bool:
        return self.mismatched == 0

    def __str__(self) -> str:
        numel = math.prod(self.shape)
        text = f"{shown(self.name)}: {self.mismatched:,} of {numel:,} element(s) differ"
        if self.max_abs is not None:
            text += f", max abs {self.max_abs:.6g}, rel L2 {self.rel_l2:.6g}"
        return text


@dataclass(frozen=True)
class DiffReport:
    """Everything diff found; ``equal`` is what the exit code reports."""

    a: str
    b: str
    atol: float
    rtol: float
    only_a: tuple[str, ...] = ()
    only_b: tuple[str, ...] = ()
    shape_changes: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...] = ()
    dtype_changes: tuple[tuple[str, str, str], ...] = ()
    tensors: tuple[TensorDelta, ...] = ()  # every compared tensor, equal or not
    state_changes: tuple[tuple[str, Any, Any], ...] = ()  # (path, value in A, value in B)

    @property
    def different(self) -> tuple[TensorDelta, ...]:
        return tuple(t for t in self.tensors if not t.equal)

    @property
    def equal(self) -> bool:
        return not (
            self.only_a
            or self.only_b
            or self.shape_changes
            or self.dtype_changes
            or self.state_changes
            or self.different
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "equal": self.equal,
            "atol": self.atol,
            "rtol": self.rtol,
            "only_a": list(self.only_a),
            "only_b": list(self.only_b),
            "shape_changes": [
                {"name": n, "a": list(sa), "b": list(sb)} for n, sa, sb in self.shape_changes
            ],
            "dtype_changes": [{"name": n, "a": da, "b": db} for n, da, db in self.dtype_changes],
            "state_changes": [
                {"path": p, "a": _json_value(va), "b": _json_value(vb)}
                for p, va, vb in self.state_changes
            ],
            "tensors": [
                {
                    "name": t.name,
                    "equal": t.equal,
                    "mismatched": t.mismatched,
                    "numel": math.prod(t.shape),
                    "max_abs": _json_float(t.max_abs),
                    "rel_l2": _json_float(t.rel_l2),
                }
                for t in self.tensors
            ],
        }

    def __str__(self) -> str:
        a, b = shown(self.a), shown(self.b)
        if self.equal:
            return (
                f"{a} and {b} are equal: {len(self.tensors)} tensor(s) compared "
                f"(atol={self.atol:g}, rtol={self.rtol:g})"
            )
        lines = [f"{a} and {b} differ:"]
        # each list is capped before its lines are made: a 200k-key diff formats 20 of them
        sections: list[tuple[str, Sequence[Any], Callable[[Any], str]]] = [
            ("Only in A", self.only_a, shown),
            ("Only in B", self.only_b, shown),
            ("Shape changes", self.shape_changes, _shape_line),
            ("Dtype changes", self.dtype_changes, lambda c: f"{shown(c[0])}: {c[1]} -> {c[2]}"),
            ("Values differ", self.different, str),
            ("State changes", self.state_changes, _state_line),
        ]
        for title, items, line in sections:
            if items:
                lines.append(f"{title} ({len(items)}):")
                lines += [f"  {line(item)}" for item in items[:MAX_LISTED]]
                if len(items) > MAX_LISTED:
                    lines.append(f"  ... and {len(items) - MAX_LISTED} more")
        return "\n".join(lines)


def _shape_line(change: tuple[str, tuple[int, ...], tuple[int, ...]]) -> str:
    return f"{shown(change[0])}: {list(change[1])} -> {list(change[2])}"


def _state_line(change: tuple[str, Any, Any]) -> str:
    return f"{shown(change[0])}: {shown_value(change[1])} -> {shown_value(change[2])}"


def _json_value(value: Any) -> Any:
    return _json_float(value) if isinstance(value, float) else value


def _json_float(value: float | None) -> float | str | None:
    if value is None or math.isfinite(value):
        return value
    return str(value)  # "inf" / "nan": keep --json output valid JSON


# -- numeric comparison --------------------------------------------------------------------


@dataclass
class _Totals:
    mismatched: int = 0
    max_abs: float = 0.0
    sq_diff: float = 0.0
    sq_ref: float = 0.0
    bitwise: bool = False


def _numeric_chunk(x: torch.Tensor, y: torch.Tensor, atol: float, rtol: float, t: _Totals) -> None:
    wide = torch.complex128 if (x.is_complex() or y.is_complex()) else torch.float64
    a, b = x.to(wide), y.to(wide)
    same = (a == b) | (a.isnan() & b.isnan())
    if x.dtype == y.dtype and not (x.is_floating_point() or x.is_complex()):
        same &= x == y  # large 64-bit integers can round to equal float64 values
    delta = torch.where(same, 0.0, (a - b).abs())
    delta = torch.nan_to_num(delta, nan=math.inf)  # NaN vs number, inf vs -inf: maximal
    ref = b.abs()
    close = same | (delta <= atol + rtol * ref)
    t.mismatched += int((~close).sum())
    if delta.numel():
        t.max_abs = max(t.max_abs, float(delta.max()))
    t.sq_diff += float((delta * delta).sum())
    ref = torch.where(ref.isfinite(), ref, 0.0)
    t.sq_ref += float((ref * ref).sum())


def _bitwise_chunk(x: torch.Tensor, y: torch.Tensor, t: _Totals) -> None:
    t.bitwise = True
    if x.dtype != y.dtype:
        t.mismatched += x.numel()
        return
    rows_a = x.view(torch.uint8).reshape(x.numel(), -1)
    rows_b = y.view(torch.uint8).reshape(y.numel(), -1)
    t.mismatched += int((rows_a != rows_b).any(dim=1).sum())


def compare_chunks(
    pairs: Iterator[tuple[torch.Tensor, torch.Tensor]], *, atol: float, rtol: float
) -> tuple[int, float | None, float | None]:
    """(mismatched, max abs, relative L2) over aligned 1-D chunk pairs."""
    totals = _Totals()
    for x, y in pairs:
        if x.dtype in _NO_ARITHMETIC or y.dtype in _NO_ARITHMETIC:
            _bitwise_chunk(x, y, totals)
        else:
            _numeric_chunk(x, y, atol, rtol, totals)
    if totals.bitwise:
        return totals.mismatched, None, None
    if totals.sq_ref > 0:
        rel = math.sqrt(totals.sq_diff) / math.sqrt(totals.sq_ref)
    else:
        rel = 0.0 if totals.sq_diff == 0 else math.inf
    return totals.mismatched, totals.max_abs, rel


def _delta(
    a: Input, b: Input, name: str, atol: float, rtol: float, progress: Progress | None
) -> TensorDelta:
    meta_a, meta_b = a.resolve(name), b.resolve(name)

    def pairs() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        chunks_b = b.chunks(meta_b.name, elements=CHUNK_ELEMENTS)
        for x in a.chunks(meta_a.name, elements=CHUNK_ELEMENTS):
            yield x, next(chunks_b)
            if progress is not None:
                progress.advance(x.numel() * x.element_size())
        for _ in chunks_b:  # drain B so its checksum is verified too
            pass

    mismatched, max_abs, rel = compare_chunks(pairs(), atol=atol, rtol=rtol)
    return TensorDelta(
        name, meta_a.shape, meta_a.dtype_name, meta_b.dtype_name, mismatched, max_abs, rel
    )


def _same_value(x: Any, y: Any) -> bool:
    if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
        return True
    return type(x) is type(y) and bool(x == y)


def _state_changes(a: Input, b: Input) -> list[tuple[str, Any, Any]]:
    left, right = state_leaves(a.tree), state_leaves(b.tree)
    missing = "<absent>"
    changes = []
    for path in [*left, *(p for p in right if p not in left)]:
        va, vb = left.get(path, missing), right.get(path, missing)
        if not _same_value(va, vb):
            changes.append((path, va, vb))
    return changes


def compare(
    a: Input, b: Input, *, atol: float = 0.0, rtol: float = 0.0, progress: Progress | None = None
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
    deltas = [_delta(a, b, name, atol, rtol, progress) for name in todo.values()]
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
) -> DiffReport:
    """Compare two checkpoints of any supported kind (statevault, safetensors, .pt, sharded).

    Checksums are verified while reading, so a damaged file raises
    :class:`ChecksumMismatchError` rather than showing up as a numeric difference.

    Example::

        report = statevault.diff("step1000.safetensors", "step2000.safetensors", atol=1e-6)
        print(report.equal, [t.name for t in report.different])
    """
    if atol < 0 or rtol < 0:
        raise ValueError(f"atol and rtol must be >= 0, got atol={atol}, rtol={rtol}")
    with open_input(a) as left, open_input(b) as right:
        return compare(left, right, atol=atol, rtol=rtol, progress=progress)
