"""Streaming statistics of a tensor's values, one chunk at a time, in float64.

Each chunk's count, mean and sum of squared deviations (M2) are computed two-pass in
float64 (its mean, then the squares of the deviations from it, corrected for the rounding of
the mean), and chunks are merged with Chan et al.'s pairwise update, so the result matches a whole-tensor float64 computation
whatever the chunking and without the cancellation of the sum-of-squares formula. The L2
norm comes from the same moments (``sum x^2 = M2 + n * mean^2``, both terms >= 0).

float64 itself overflows on the squares of values beyond ~1e154 and underflows on those
below ~1e-162; only float64 tensors hold such values, so a chunk whose largest magnitude
is outside that range is scaled by an exact power of two first; the running moments move
to the larger scale when a chunk needs one.

Used by :mod:`statevault.tools.tensor_stats`; pure torch, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from statevault.reports.stats_report import Histogram

PIECE_ELEMENTS = 1 << 15  # torch's GRAIN_SIZE: kernels on this many elements run inline
NATIVE = frozenset({torch.float64, torch.float32, torch.float16, torch.bfloat16})
SAFE_EXPONENT = 480  # |values| within 2**±480: squares and sums of 2**40 of them fit float64


def as_values(chunk: torch.Tensor) -> torch.Tensor:
    """The chunk's values as a fresh 1-D float64 tensor (complex: real and imaginary parts).

    Always a copy: the caller's chunk may be a view of a live tensor, and it is changed
    in place below.
    """
    flat = chunk.reshape(-1)
    if flat.is_complex():
        return torch.view_as_real(flat.to(torch.complex128, copy=True)).reshape(-1)
    return flat.to(torch.float64, copy=True)


def _scale_exponent(largest: float) -> int:
    """0 for ordinary magnitudes; else the exponent that brings ``largest`` near 1."""
    exponent = math.frexp(largest)[1]
    return exponent if largest > 0 and abs(exponent) > SAFE_EXPONENT else 0


def _times_power_of_two(values: torch.Tensor, exponent: int) -> None:
    """``values *= 2**exponent`` in place, exactly, in two steps (2**1074 is not a float)."""
    half = exponent // 2
    for part in (half, exponent - half):
        if part:
            values.mul_(math.ldexp(1.0, part))


def _ldexp(value: float, exponent: int) -> float:
    """``value * 2**exponent``: inf (with its sign) where float64 cannot hold it."""
    try:
        return math.ldexp(value, exponent)
    except OverflowError:
        return math.copysign(math.inf, value)


class Summary(NamedTuple):
    """What the moments come to; every field None when there was no finite value."""

    minimum: float | None
    maximum: float | None
    mean: float | None
    std: float | None
    norm: float | None


@dataclass
class RunningMoments:
    """The statistics of every value added so far (mutable; one per tensor per thread).

    The moments are of the values in units of ``2**scale``, less ``shift`` (the first
    chunk's mean): values near a large common offset (1e12 + noise) then subtract exactly,
    and their deviations keep every digit.
    """

    values: int = 0
    nan: int = 0
    posinf: int = 0
    neginf: int = 0
    zeros: int = 0
    finite: int = 0
    minimum: float = math.inf
    maximum: float = -math.inf
    mean: float = 0.0  # of the finite values, scaled and shifted
    m2: float = 0.0  # sum of squared deviations from the mean, scaled
    scale: int = 0
    shift: float = 0.0
    _buffer: torch.Tensor | None = field(default=None, repr=False)

    def add(self, chunk: torch.Tensor) -> None:
        """Fold one chunk (any shape, any numeric dtype) into the totals."""
        flat = chunk.reshape(-1)
        for start in range(0, max(1, flat.numel()), PIECE_ELEMENTS):
            self._add_piece(flat[start : start + PIECE_ELEMENTS])

    def _add_piece(self, piece: torch.Tensor) -> None:
        """One piece at torch's grain, so no kernel starts the intra-op thread pool (whose
        spinning workers cost more than the arithmetic on a busy machine)."""
        values = piece if piece.dtype in NATIVE else as_values(piece)
        self.values += values.numel()
        if values.numel() == 0:
            return
        low, high = (v.item() for v in torch.aminmax(values))  # NaN propagates
        if not (math.isfinite(low) and math.isfinite(high)):
            values = self._drop_nonfinite(values)
            if values.numel() == 0:
                return
            low, high = (v.item() for v in torch.aminmax(values))
        count = values.numel()
        self._rescale(_scale_exponent(max(-low, high)))
        self.minimum = min(self.minimum, low)
        self.maximum = max(self.maximum, high)
        work, squares = self._scratch(count)
        work.copy_(values)  # float64, in buffers reused piece after piece
        self.zeros += count - int(torch.count_nonzero(work).item())
        _times_power_of_two(work, -self.scale)
        mean = work.sum().item() / count
        work.sub_(mean)
        # the deviations from a rounded mean sum to n * (its rounding error), not 0:
        # taking that back out is the corrected two-pass formula (Chan, Golub, LeVeque)
        residual = work.sum().item()
        # a product and a sum, not torch.dot: BLAS starts its own thread pool for a dot
        # this long, which costs milliseconds per piece on a busy machine
        m2 = torch.mul(work, work, out=squares).sum().item() - residual * residual / count
        if self.finite == 0:
            self.shift = mean
        # mean - shift is exact where it matters (close values), the residual is small
        self._merge(count, (mean - self.shift) + residual / count, max(m2, 0.0))

    def _scratch(self, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._buffer is None or self._buffer.shape[1] < count:
            self._buffer = torch.empty(2, count, dtype=torch.float64)
        return self._buffer[0, :count], self._buffer[1, :count]

    def _drop_nonfinite(self, values: torch.Tensor) -> torch.Tensor:
        self.nan += int(torch.isnan(values).sum().item())
        self.posinf += int((values == math.inf).sum().item())
        self.neginf += int((values == -math.inf).sum().item())
        return values[torch.isfinite(values)]

    def _rescale(self, scale: int) -> None:
        """Move to a larger scale (or any scale while only zeros were seen)."""
        nothing_yet = self.finite == 0 or max(-self.minimum, self.maximum) == 0
        if nothing_yet or scale > self.scale:
            step = self.scale - scale  # <= 0 unless only zeros were seen
            self.mean = math.ldexp(self.mean, step) if self.mean else 0.0
            self.shift = math.ldexp(self.shift, step) if self.shift else 0.0
            self.m2 = math.ldexp(self.m2, 2 * step) if self.m2 else 0.0
            self.scale = scale

    def _merge(self, count: int, mean: float, m2: float) -> None:
        """Chan's parallel update with another group's (count, mean, M2)."""
        total = self.finite + count
        delta = mean - self.mean
        self.mean += delta * count / total
        self.m2 += m2 + delta * delta * (self.finite * count / total)
        self.finite = total

    def result(self) -> Summary:
        if self.finite == 0:
            return Summary(None, None, None, None, None)
        mean = self.shift + self.mean
        return Summary(
            minimum=self.minimum,
            maximum=self.maximum,
            mean=_ldexp(mean, self.scale),
            std=_ldexp(math.sqrt(self.m2 / self.finite), self.scale),
            norm=self._norm(math.sqrt(self.m2 + self.finite * mean * mean)),
        )

    def _norm(self, scaled: float) -> float:
        """The L2 norm from its scaled value: never below the largest magnitude (it cannot
        be), and that magnitude where rounding of a few ulps alone went past float64's range
        (one value of 1.8e308 among zeros has the norm 1.8e308, not inf)."""
        largest = max(-self.minimum, self.maximum)
        norm = _ldexp(scaled, self.scale)
        if math.isinf(norm) and _ldexp(scaled * (1 - 2**-50), self.scale) <= largest:
            return largest
        return max(norm, largest)


class RunningHistogram:
    """Counts of finite values in ``bins`` equal bins over a known [low, high]."""

    def __init__(self, low: float, high: float, bins: int) -> None:
        self.low, self.high, self.bins = low, high, bins
        self.counts = torch.zeros(bins, dtype=torch.int64)
        # a range wider than float64 can subtract across: bin on half the values
        self._halved = not math.isfinite(high - low)

    def add(self, chunk: torch.Tensor) -> None:
        values = as_values(chunk)
        values = values[torch.isfinite(values)]
        if values.numel() == 0:
            return
        low, high = self.low, self.high
        if self._halved:
            values.mul_(0.5)
            low, high = low / 2, high / 2
        if low == high:  # a constant tensor: every value in the middle bin
            self.counts[self.bins // 2] += values.numel()
            return
        # torch.histc counts x == high in the last bin, as numpy.histogram does
        self.counts += torch.histc(values, bins=self.bins, min=low, max=high).to(torch.int64)

    def result(self) -> Histogram:
        return Histogram(self.low, self.high, tuple(int(c) for c in self.counts.tolist()))
