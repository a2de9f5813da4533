"""The values a CheckpointManager hands out (StepInfo, Restored) and the checks of its arguments.

Imported by ``statevault.manager.manager`` and the public package.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from statevault.errors import InvalidArgumentError, UnsupportedObjectError
from statevault.reports.load_report import LoadReport

Status = Literal["valid", "damaged", "unverified"]


@dataclass(frozen=True)
class StepInfo:
    """One committed step as :meth:`CheckpointManager.steps` lists it.

    ``status`` is ``"valid"`` (written by this manager or its checksums verified),
    ``"damaged"`` (``problem`` says why) or ``"unverified"`` (not checked yet). ``kept``
    holds why retention keeps it (empty: the next retention pass deletes it).
    """

    step: int
    status: Status
    time: float | None = None
    metrics: Mapping[str, float | None] = field(default_factory=dict)
    metadata: Mapping[str, str] = field(default_factory=dict)
    nbytes: int = 0
    preempted: bool = False
    kept: tuple[str, ...] = ()
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "status": self.status,
            "time": self.time,
            "metrics": dict(self.metrics),
            "metadata": dict(self.metadata),
            "bytes": self.nbytes,
            "preempted": self.preempted,
            "kept": list(self.kept),
            "problem": self.problem,
        }


@dataclass(frozen=True)
class Restored:
    """What :meth:`CheckpointManager.restore` read: the step, its state, and its records.

    ``reports`` holds, for each object given in ``into=``, the :class:`LoadReport` of
    ``load_into`` (modules) or None (objects loaded through their own ``load_state_dict``).
    """

    step: int
    state: Any
    metrics: Mapping[str, float | None] = field(default_factory=dict)
    metadata: Mapping[str, str] = field(default_factory=dict)
    preempted: bool = False
    reports: Mapping[str, LoadReport | None] = field(default_factory=dict)

    def __repr__(self) -> str:  # the state may be gigabytes of tensors: never print it
        return f"<Restored step {self.step}, metrics {dict(self.metrics)}>"


def checked_step(step: object) -> int:
    """A step number: a non-negative int (numpy ints too), never a bool or a float."""
    if isinstance(step, bool):  # an int to Python, but never meant as a step
        raise InvalidArgumentError(f"step must be a non-negative int, got {step!r}")
    try:
        number = operator.index(step)  # type: ignore[arg-type]
    except TypeError:
        raise InvalidArgumentError(f"step must be a non-negative int, got {step!r}") from None
    if number < 0:
        raise InvalidArgumentError(f"step must be a non-negative int, got {number}")
    return number


def checked_metrics(metrics: Mapping[str, Any] | None) -> dict[str, float | None]:
    """Metrics as the manifest stores them: str -> float; NaN and inf become None (unranked)."""
    if metrics is None:
        return {}
    if not isinstance(metrics, Mapping):
        raise InvalidArgumentError(f"metrics must be a mapping of str to number, got {metrics!r}")
    checked: dict[str, float | None] = {}
    for name, value in metrics.items():
        if not isinstance(name, str):
            raise InvalidArgumentError(f"metrics: key {name!r} is not a str")
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise InvalidArgumentError(
                f"metrics[{name!r}]: {value!r} is not a number; pass e.g. float(loss)"
            )
        number = float(value)
        checked[name] = number if math.isfinite(number) else None
    return checked


def checked_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    """Metadata as ``statevault.save`` takes it: str -> str (checked now, not in the background)."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in metadata.items()
    ):
        raise UnsupportedObjectError(
            f"metadata must map str to str (like safetensors), got {metadata!r}; use "
            "json.dumps() for structured values"
        )
    return dict(metadata)
