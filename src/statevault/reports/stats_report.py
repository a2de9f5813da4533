"""The result of ``statevault.stats``: per-tensor health statistics and flags, as values.

Frozen dataclasses with ``to_dict()`` (the ``--json`` form) and a short text form. The
numbers are computed by :mod:`statevault.tools.tensor_stats`; the HTML page renders them
(:mod:`statevault.reports.html`). Imported by tools, the HTML renderer and the CLI.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from statevault.reports.display import shown
from statevault.reports.load_report import capped

DAMAGED = "damaged"  # the training state is broken: NaN/Inf, a checksum mismatch
WARNING = "warning"  # worth a look, often fine (zeros in a fresh model's biases)


@dataclass(frozen=True)
class Flag:
    """One finding about one tensor, with the reason in plain language.

    ``kind`` is a stable identifier for scripts (``"nan"``, ``"inf"``, ``"overflow"``,
    ``"second_moment_nan"``, ``"negative_second_moment"``, ``"checksum"``, ``"all_zeros"``,
    ``"constant"``, ``"saturated"``, ``"norm_outlier"``); ``severity`` is
    :data:`DAMAGED` or :data:`WARNING`.
    """

    kind: str
    severity: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "severity": self.severity, "reason": self.reason}


@dataclass(frozen=True)
class Histogram:
    """Counts of the finite values in ``len(counts)`` equal bins spanning [low, high]."""

    low: float
    high: float
    counts: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high, "counts": list(self.counts)}


@dataclass(frozen=True)
class TensorStats:
    """Statistics of one stored tensor.

    Moments, extremes and the norm are over the finite values (NaN and ±Inf are counted,
    not averaged), computed in float64; ``std`` is the population standard deviation
    (``ddof=0``, numpy's default). They are ``None`` when there is no finite value (or
    the dtype has no arithmetic in torch, ``float4_e2m1fn_x2``). Complex tensors are
    described by their real and imaginary parts taken as separate values, so ``values``
    counts those parts.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    values: int = 0  # values examined (elements; two per complex element)
    nan: int = 0
    posinf: int = 0
    neginf: int = 0
    zeros: int = 0
    minimum: float | None = None
    maximum: float | None = None
    mean: float | None = None
    std: float | None = None
    norm: float | None = None
    flags: tuple[Flag, ...] = ()
    histogram: Histogram | None = field(default=None, repr=False)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nonfinite(self) -> int:
        return self.nan + self.posinf + self.neginf

    @property
    def zero_fraction(self) -> float | None:
        return self.zeros / self.values if self.values else None

    @property
    def damaged(self) -> bool:
        return any(flag.severity == DAMAGED for flag in self.flags)

    def formatted(self) -> dict[str, str]:
        """min, max, mean, std and norm as a person reads them (``3.4e-05``, ``1.2k``)."""
        values = {
            "min": self.minimum,
            "max": self.maximum,
            "mean": self.mean,
            "std": self.std,
            "norm": self.norm,
        }
        return {key: human_number(value) for key, value in values.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "numel": self.numel,
            "nbytes": self.nbytes,
            "values": self.values,
            "nan": self.nan,
            "posinf": self.posinf,
            "neginf": self.neginf,
            "zeros": self.zeros,
            "zero_fraction": self.zero_fraction,
            "min": json_number(self.minimum),
            "max": json_number(self.maximum),
            "mean": json_number(self.mean),
            "std": json_number(self.std),
            "norm": json_number(self.norm),
            "flags": [flag.to_dict() for flag in self.flags],
            **({"histogram": self.histogram.to_dict()} if self.histogram else {}),
        }


@dataclass(frozen=True)
class StatsReport:
    """Everything ``stats`` found; ``damaged`` is what the CLI's exit code reports."""

    path: str
    kind: str
    tensors: tuple[TensorStats, ...]
    checksummed: bool  # every tensor's bytes were checked against a recorded digest
    metadata: dict[str, str] = field(default_factory=dict)
    state: Any = None  # non-tensor nested state as JSON (epoch, hyper-parameters)
    notes: tuple[str, ...] = ()

    @property
    def damaged(self) -> bool:
        """True when a flag says the training state is broken (NaN/Inf, bad checksum)."""
        return any(t.damaged for t in self.tensors)

    @property
    def flagged(self) -> tuple[TensorStats, ...]:
        return tuple(t for t in self.tensors if t.flags)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "kind": self.kind,
            "damaged": self.damaged,
            "checksummed": self.checksummed,
            "tensor_count": len(self.tensors),
            "nbytes": self.nbytes,
            "flag_count": sum(len(t.flags) for t in self.tensors),
            "metadata": dict(self.metadata),
            "state": self.state,
            "notes": list(self.notes),
            "tensors": [t.to_dict() for t in self.tensors],
        }

    def __str__(self) -> str:
        path = shown(self.path)
        flagged = self.flagged
        if self.damaged:
            broken = sum(t.damaged for t in self.tensors)
            head = f"{path}: DAMAGED: {broken} of {len(self.tensors)} tensor(s) are broken"
        elif flagged:
            head = f"{path}: OK with warnings: {len(flagged)} of {len(self.tensors)} tensor(s)"
        else:
            head = f"{path}: OK: {len(self.tensors)} tensor(s), nothing flagged"
        lines = [
            f"{shown(t.name)}: {flag.severity}: {flag.reason}"
            for t in sorted(flagged, key=lambda t: not t.damaged)
            for flag in t.flags
        ]
        return "\n".join([head, *(f"  {line}" for line in capped(lines)), *self.notes])


def json_number(value: float | None) -> float | str | None:
    """A float as strict JSON holds it: ``"inf"``/``"-inf"`` for a sum that overflowed."""
    if value is None or math.isfinite(value):
        return value
    return str(value)


def layer_position(name: str) -> tuple[str, int | None]:
    """(layer type, depth) of a tensor name: ``layers.3.mlp.w`` is ``("layers.*.mlp.w", 3)``.

    Every all-digit part becomes ``*`` in the type (experts of all layers are siblings);
    the depth is the first of them, None when the name has no index.
    """
    parts = name.split(".")
    depth = None
    for i, part in enumerate(parts):
        if part.isascii() and part.isdigit() and len(part) <= 9:
            depth = int(part) if depth is None else depth
            parts[i] = "*"
    return ".".join(parts), depth


def human_number(value: float | None) -> str:
    """A statistic as people read it: ``0.0123``, ``-4.5``, ``3.4e-5``, ``1.2e38``.

    Four significant digits, ties rounded away from zero as JavaScript's ``toPrecision``
    does, so the terminal and the HTML page print the same digits.
    """
    if value is None:
        return ""
    if value == 0:
        return "0"  # -0.0 too
    if not math.isfinite(value):
        return str(value)
    exact = Decimal(value)
    rounded = exact.quantize(Decimal(1).scaleb(exact.adjusted() - 3), rounding=ROUND_HALF_UP)
    if 1e-3 <= abs(value) < 1e4:  # the range of the value, as the page decides it
        return f"{float(rounded):g}"
    exponent = rounded.adjusted()
    mantissa = f"{rounded.scaleb(-exponent):f}"
    if "." in mantissa:
        mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{exponent}"


def natural_key(name: str) -> tuple[tuple[int, int, str], ...]:
    """Sort key putting ``layers.2`` before ``layers.10`` (digit runs by length, then text)."""
    return tuple(
        (0, len(p), p) if p.isascii() and p.isdigit() else (1, 0, p) for p in name.split(".")
    )
