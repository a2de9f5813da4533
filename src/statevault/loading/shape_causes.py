"""Cause finders for shape mismatches: transposed, another first dimension, reshaped, other.

Pure functions over (key, checkpoint shape, model shape) triples. Split from the name-based
finders in ``loading.diagnose``, which calls ``shape_causes`` last.

May import: ``loading.fixes``, ``reports.load_entries``. Imported by ``loading.diagnose``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from statevault.loading.fixes import Call, edit_then_load, literal, model_key, option_fix, unfilled
from statevault.reports.load_entries import Cause, CauseKind

Shape = tuple[int, ...]
_VOCAB_HINTS = ("embed", "vocab", "wte", "token", "lm_head", "word")


Mismatch = tuple[str, Shape, Shape]  # (model key, checkpoint shape, model shape)


@dataclass(frozen=True)
class _ShapeGroups:
    """Mismatches sorted by what probably happened; each key is in exactly one group."""

    transposed: list[Mismatch]
    first_dim: dict[tuple[int, int], list[str]]  # (checkpoint, model) first dim -> keys
    reshaped: list[tuple[str, Shape]]  # key, model shape
    other: list[str]


def _grouped(mismatches: Sequence[Mismatch]) -> _ShapeGroups:
    groups = _ShapeGroups([], {}, [], [])
    for key, ckpt, model in mismatches:
        if len(ckpt) == 2 and ckpt == model[::-1]:
            groups.transposed.append((key, ckpt, model))
        elif len(ckpt) == len(model) >= 1 and ckpt[1:] == model[1:]:
            groups.first_dim.setdefault((ckpt[0], model[0]), []).append(key)
        elif math.prod(ckpt) == math.prod(model):
            groups.reshaped.append((key, model))
        else:
            groups.other.append(key)
    return groups


def _transposed_cause(
    transposed: Sequence[Mismatch], call: Call, stored: Mapping[str, str]
) -> Cause:
    key, ckpt, model = transposed[0]
    keys = [m[0] for m in transposed]
    code = edit_then_load(call, stored, keys, lambda n: f"state[{literal(n)}].t().contiguous()")
    return Cause(
        CauseKind.TRANSPOSED,
        f"{len(transposed)} weight(s) are transposed: e.g. '{key}' is {list(ckpt)} in the "
        f"checkpoint and {list(model)} in the model (saved from a layer that stores "
        "in x out, such as GPT-2's Conv1D, or converted from another framework)",
        f"transpose them and load the dict: {code}",
        code=code,
    )


def _first_dim_cause(ckpt_n: int, model_n: int, keys: Sequence[str], call: Call) -> Cause:
    modules = sorted({k.rpartition(".")[0] or k for k in keys})
    vocab = any(hint in k.lower() for k in keys for hint in _VOCAB_HINTS)
    what = "vocabulary size" if vocab else "number of classes / output size"
    return option_fix(
        CauseKind.FIRST_DIM,
        f"the {what} differs: {', '.join(repr(m) for m in modules[:5])} has "
        f"{ckpt_n} in the checkpoint and {model_n} in the model (first dimension of "
        f"{len(keys)} tensor(s))",
        call,
        {"strict": False},
        f"to fine-tune with a new {what.split(' / ')[0]}: everything else loads and "
        f"these {unfilled(call)}; the report lists them as skipped",
    )


def _reshaped_cause(
    reshaped: Sequence[tuple[str, Shape]], call: Call, stored: Mapping[str, str]
) -> Cause:
    shapes = dict(reshaped)
    code = edit_then_load(
        call,
        stored,
        [k for k, _ in reshaped],
        lambda n: f"state[{literal(n)}].reshape({literal(shapes[model_key(stored, n)])})",
    )
    return Cause(
        CauseKind.RESHAPED,
        f"{len(reshaped)} tensor(s) hold the same number of elements in another shape "
        f"(e.g. '{reshaped[0][0]}'): a layer type changed, such as Conv 1x1 vs Linear",
        f"reshape them and load the dict: {code}",
        code=code,
    )


def shape_causes(
    mismatches: Sequence[Mismatch], call: Call, stored: Mapping[str, str]
) -> list[Cause]:
    """Causes for shape mismatches, in the order: transposed, first dimension, reshaped, other.

    ``stored`` maps each mismatched model key to its name in the checkpoint.
    """
    groups = _grouped(mismatches)
    causes = []
    if groups.transposed:
        causes.append(_transposed_cause(groups.transposed, call, stored))
    for (ckpt_n, model_n), keys in groups.first_dim.items():
        causes.append(_first_dim_cause(ckpt_n, model_n, keys, call))
    if groups.reshaped:
        causes.append(_reshaped_cause(groups.reshaped, call, stored))
    if groups.other:
        causes.append(
            option_fix(
                CauseKind.SHAPE,
                f"{len(groups.other)} tensor(s) have different sizes (e.g. '{groups.other[0]}'): "
                "the model was built with a different configuration than the checkpoint",
                call,
                {"strict": False},
                f"skips them and they {unfilled(call)}; or build the model with the "
                "checkpoint's configuration",
            )
        )
    return causes
