"""Numeric comparison of two chunks of one tensor, accumulated over the tensor's chunks.

Values are compared in float64 (complex128 for complex tensors) with ``torch.isclose``
semantics, ``|a - b| <= atol + rtol * |b|``; NaNs in the same place count as equal. Dtypes
with no arithmetic in torch (``float4_e2m1fn_x2``) are compared bit for bit. Pure
arithmetic on tensors in memory: no I/O. May be imported by: ``statevault.tools``.
"""

from __future__ import annotations

import ctypes
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import torch

PIECE_ELEMENTS = 1 << 15  # arithmetic pieces: in cache, and at torch's grain (no thread pool)
_WIDE_INTEGERS = frozenset(
    dt for dt in (torch.int64, getattr(torch, "uint64", None)) if isinstance(dt, torch.dtype)
)  # integers float64 cannot hold exactly
_NO_ARITHMETIC = frozenset(
    dt for dt in (getattr(torch, "float4_e2m1fn_x2", None),) if isinstance(dt, torch.dtype)
)


@dataclass
class _Totals:
    mismatched: int = 0
    max_abs: float = 0.0
    sq_diff: float = 0.0
    sq_ref: float = 0.0
    bitwise: bool = False


@functools.cache
def _memcmp() -> Callable[[int, int, int], int]:
    """libc's ``memcmp`` (through ctypes, so the GIL is released while it runs)."""
    function = ctypes.CDLL(None).memcmp
    function.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    function.restype = ctypes.c_int
    return cast("Callable[[int, int, int], int]", function)


def _same_bytes(x: torch.Tensor, y: torch.Tensor) -> bool:
    """Whether two 1-D chunks of one dtype hold identical bytes (then they compare equal).

    ``memcmp``, at memory speed: ``torch.equal`` ran at ~0.2-0.5 GB/s here (uint8 views).
    """
    if x.dtype != y.dtype or x.numel() != y.numel():
        return False
    if not (x.is_contiguous() and y.is_contiguous()):
        x, y = x.contiguous(), y.contiguous()
    nbytes = x.numel() * x.element_size()
    return nbytes == 0 or _memcmp()(x.data_ptr(), y.data_ptr(), nbytes) == 0


def _wide(x: torch.Tensor, complex_: bool) -> torch.Tensor:
    return x.to(torch.complex128 if complex_ else torch.float64)


def squared_norm(y: torch.Tensor) -> float:
    """``sum(|y|^2)`` over the finite elements, in float64."""
    total = 0.0
    for start in range(0, y.numel(), PIECE_ELEMENTS):
        total += _finite_sq(_wide(y[start : start + PIECE_ELEMENTS], y.is_complex()))
    return total


def _sum_sq(values: torch.Tensor) -> float:
    # not torch.dot: that goes to BLAS and its own threads (7 ms per 32k elements here)
    return float(values.square().sum())


def _finite_sq(b: torch.Tensor) -> float:
    ref = b.abs() if b.is_complex() else b
    total = _sum_sq(ref)
    if math.isfinite(total):
        return total
    ref = torch.where(ref.isfinite(), ref, 0.0)  # rare: only when an inf or NaN is there
    return _sum_sq(ref)


def _numeric_piece(x: torch.Tensor, y: torch.Tensor, atol: float, rtol: float, t: _Totals) -> None:
    """One piece of at most ``PIECE_ELEMENTS``: few passes, in cache, on this thread (torch
    runs ops this small inline; through its intra-op pool on an oversubscribed machine they
    were 10-50x slower). NaN and inf handling only when a sum shows one is there."""
    complex_ = x.is_complex() or y.is_complex()
    a, b = _wide(x, complex_), _wide(y, complex_)
    delta = (a - b).abs()
    if complex_:
        delta = delta.to(torch.float64)
    sq_diff = _sum_sq(delta)
    if math.isnan(sq_diff):  # rare: NaN in the same place is equal, inf == inf too
        same = (a == b) | (a.isnan() & b.isnan())
        delta = torch.where(delta.isnan(), math.inf, delta)  # NaN vs number: maximal
        delta.masked_fill_(same, 0.0)
        sq_diff = _sum_sq(delta)
    peak = float(delta.max()) if delta.numel() else 0.0
    if atol == rtol == 0 and x.dtype == y.dtype and x.dtype in _WIDE_INTEGERS:
        t.mismatched += int(torch.count_nonzero(x != y))  # 2**53 + 1 vs 2**53: float64 agrees
    elif rtol == 0:
        if peak > atol:  # otherwise nothing is outside the tolerance: skip the count
            t.mismatched += int(torch.count_nonzero(delta > atol if atol else delta))
    else:
        t.mismatched += int(torch.count_nonzero(delta > b.abs().mul_(rtol).add_(atol)))
    t.max_abs = max(t.max_abs, peak)
    t.sq_diff += sq_diff
    t.sq_ref += _finite_sq(b)


def _numeric_chunk(x: torch.Tensor, y: torch.Tensor, atol: float, rtol: float, t: _Totals) -> None:
    for start in range(0, x.numel(), PIECE_ELEMENTS):
        stop = start + PIECE_ELEMENTS
        _numeric_piece(x[start:stop], y[start:stop], atol, rtol, t)


def _bitwise_chunk(x: torch.Tensor, y: torch.Tensor, t: _Totals) -> None:
    t.bitwise = True
    if x.dtype != y.dtype:
        t.mismatched += x.numel()
        return
    rows_a = x.view(torch.uint8).reshape(x.numel(), -1)
    rows_b = y.view(torch.uint8).reshape(y.numel(), -1)
    t.mismatched += int((rows_a != rows_b).any(dim=1).sum())


class TensorComparison:
    """Accumulates one tensor's comparison chunk by chunk.

    Byte-identical chunks cost one ``memcmp``-speed comparison and no arithmetic. Only the
    relative L2 needs anything from them (``|b|^2``), and only once the tensor turns out to
    differ: equal chunks met before the first difference are listed and re-read from B at
    the end (``pending``), equal chunks after it are measured on the spot.
    """

    def __init__(self, atol: float, rtol: float) -> None:
        self.atol, self.rtol = atol, rtol
        self.totals = _Totals()
        self.differs = False
        self.pending: list[int] = []  # equal chunks seen before the first difference

    def add(self, index: int, x: torch.Tensor, y: torch.Tensor) -> None:
        if x.dtype in _NO_ARITHMETIC or y.dtype in _NO_ARITHMETIC:
            _bitwise_chunk(x, y, self.totals)
            return
        if _same_bytes(x, y):
            if self.differs:
                self.totals.sq_ref += squared_norm(y)
            else:
                self.pending.append(index)
            return
        self.differs = True
        _numeric_chunk(x, y, self.atol, self.rtol, self.totals)

    def result(
        self, reread: Callable[[list[int]], float]
    ) -> tuple[int, float | None, float | None]:
        t = self.totals
        if t.bitwise:
            return t.mismatched, None, None
        if not self.differs:
            return 0, 0.0, 0.0
        if self.pending:
            t.sq_ref += reread(self.pending)
        if t.sq_ref > 0:
            rel = math.sqrt(t.sq_diff) / math.sqrt(t.sq_ref)
        else:
            rel = 0.0 if t.sq_diff == 0 else math.inf
        return t.mismatched, t.max_abs, rel
