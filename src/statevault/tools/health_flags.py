"""The health rules ``stats`` applies: which numbers mean damage, which deserve a look.

Each rule reads finished :class:`TensorStats` and returns :class:`Flag` values with a reason
a person can act on. Per-tensor rules look at one tensor; :func:`sibling_flags` compares a
tensor's norm with its layer-type siblings (the same name pattern and shape in other
layers). Pure functions, no I/O; used by :mod:`statevault.tools.tensor_stats`.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from statevault.reports.stats_report import (
    DAMAGED,
    WARNING,
    Flag,
    TensorStats,
    human_number,
    layer_position,
)

# Optimizer state entries that hold a running mean of squared gradients (never negative):
# Adam/AdamW/NAdam/RAdam/Adamax ``exp_avg_sq``/``max_exp_avg_sq``, RMSprop/Adadelta
# ``square_avg``/``acc_delta``, Adafactor's factored rows and columns.
SECOND_MOMENTS = frozenset(
    {"exp_avg_sq", "max_exp_avg_sq", "square_avg", "acc_delta", "exp_avg_sq_row", "exp_avg_sq_col"}
)
# Optimizer state entries: not compared with siblings (a parameter index is not a layer)
OPTIMIZER_ENTRIES = SECOND_MOMENTS | {"exp_avg", "momentum_buffer", "exp_inf", "step", "mu", "eta"}
HALF_MAXIMA = {"float16": 65504.0, "bfloat16": 3.3895313892515355e38}
OUTLIER_RATIO = 10.0  # a norm this many times above or below its siblings' median
MIN_SIBLINGS = 4  # fewer than this and "the usual norm" means little


def _count(n: int, what: str) -> str:
    return f"{n:,} {what}{'' if n == 1 else 's'}"


def value_flags(t: TensorStats) -> list[Flag]:
    """NaN, Inf and half-precision overflow: damage whatever the tensor is."""
    flags = []
    leaf = t.name.rsplit(".", 1)[-1]
    if t.nan and leaf in SECOND_MOMENTS:
        flags.append(
            Flag(
                "second_moment_nan",
                DAMAGED,
                f"optimizer second moment ({leaf}) holds {_count(t.nan, 'NaN')}: every later "
                "step divides by it, so the parameter it belongs to turns NaN; the run "
                "diverged before this save, resume from an earlier checkpoint",
            )
        )
    elif t.nan:
        flags.append(
            Flag(
                "nan",
                DAMAGED,
                f"holds {_count(t.nan, 'NaN value')} of {t.values:,}: the state is damaged "
                "(a diverged step or a bad write); resume from an earlier checkpoint",
            )
        )
    if t.posinf or t.neginf:
        flags.append(
            Flag(
                "inf",
                DAMAGED,
                f"holds {_count(t.posinf + t.neginf, 'infinite value')} "
                f"(+inf {t.posinf:,}, -inf {t.neginf:,}) of {t.values:,}",
            )
        )
    if (t.posinf or t.neginf) and t.dtype in HALF_MAXIMA:
        flags.append(
            Flag(
                "overflow",
                DAMAGED,
                f"{t.dtype} values overflowed to ±inf (beyond ±{human_number(HALF_MAXIMA[t.dtype])}): a "
                f"wider value was cast down or an update overflowed in {t.dtype}",
            )
        )
    if leaf in SECOND_MOMENTS and t.minimum is not None and t.minimum < 0:
        flags.append(
            Flag(
                "negative_second_moment",
                DAMAGED,
                f"optimizer second moment ({leaf}) has negative values (min {human_number(t.minimum)}); "
                "a mean of squares cannot be negative, so this state was corrupted",
            )
        )
    return flags


def shape_flags(t: TensorStats) -> list[Flag]:
    """All zeros, constant, or pinned at a half-precision maximum: often a bug, not damage."""
    if t.values <= 1 or t.minimum is None or t.maximum is None:
        return []  # a scalar (a step counter) is constant by nature
    flags = []
    if t.zeros == t.values:
        flags.append(
            Flag(
                "all_zeros",
                WARNING,
                "every value is 0: expected for a fresh bias or optimizer buffer, a bug for "
                "trained weights (an uninitialised or zeroed layer)",
            )
        )
    elif t.minimum == t.maximum and t.nonfinite == 0:
        flags.append(
            Flag(
                "constant",
                WARNING,
                f"every value is {human_number(t.minimum)}: expected for a fresh norm layer's scale, "
                "suspicious for trained weights",
            )
        )
    top = HALF_MAXIMA.get(t.dtype)
    if top is not None and max(-t.minimum, t.maximum) >= top:
        flags.append(
            Flag(
                "saturated",
                WARNING,
                f"values sit at {t.dtype}'s largest finite value (±{human_number(top)}): likely "
                "clamped after overflowing",
            )
        )
    return flags


def sibling_flags(tensors: Sequence[TensorStats]) -> dict[str, Flag]:
    """Tensors whose norm is over :data:`OUTLIER_RATIO` x off their siblings' median.

    Siblings share a layer type (``layers.*.mlp.w``) and a shape. Optimizer state is
    left out: its index is a parameter number, not a layer.
    """
    groups: dict[tuple[str, tuple[int, ...]], list[TensorStats]] = {}
    for t in tensors:
        kind, depth = layer_position(t.name)
        leaf = t.name.rsplit(".", 1)[-1]
        if depth is not None and leaf not in OPTIMIZER_ENTRIES and t.norm and t.values > 1:
            groups.setdefault((kind, t.shape), []).append(t)
    found: dict[str, Flag] = {}
    for (kind, _), members in groups.items():
        if len(members) < MIN_SIBLINGS:
            continue
        median = statistics.median(m.norm for m in members if m.norm is not None)
        for m in members:
            assert m.norm is not None  # grouped only with a norm
            ratio = m.norm / median
            if ratio > OUTLIER_RATIO or ratio < 1 / OUTLIER_RATIO:
                found[m.name] = Flag(
                    "norm_outlier",
                    WARNING,
                    f"L2 norm {human_number(m.norm)} is {ratio:.3g}x the median "
                    f"({human_number(median)}) of its "
                    f"{len(members)} siblings {kind}: a layer that diverged or was not "
                    "trained/loaded like the others",
                )
    return found
