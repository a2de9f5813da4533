"""Retention: which committed steps a training run keeps, as small, pure, composable policies.

A policy maps the committed steps (``StepRecord``: number, commit time, metrics) to the
steps it keeps, each with the reason it keeps it. ``AnyOf`` keeps what any of its policies
keeps. :func:`plan_retention` turns a policy plus the steps that must never go (the newest
valid, the best, the resumed-from, saves in flight) into a :class:`RetentionPlan`: what to
keep and why, what to delete. Nothing here touches the disk or torch, so every rule is
tested on plain lists.

Rule for a step without the monitored metric (or with a NaN/inf value there): it is never
ranked by :class:`KeepBest` nor chosen by :func:`best_step`: neither best nor worst. It is
kept only if another policy (or a protection) keeps it.

Imported by ``statevault.manager.manager`` and the public package; imports only errors.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from statevault.errors import InvalidArgumentError

Mode = Literal["min", "max"]
NO_POLICY = "no retention policy: every step is kept"


@dataclass(frozen=True)
class StepRecord:
    """What a policy knows about one committed step: its number, commit time and metrics.

    ``time`` is seconds since the epoch; a metric is ``None`` where it was NaN or infinite.
    """

    step: int
    time: float = 0.0
    metrics: Mapping[str, float | None] = field(default_factory=dict)


class RetentionPolicy(Protocol):
    """Chooses steps to keep: ``keep(records)`` maps each kept step to why it is kept.

    ``records`` are sorted by step, oldest first, and hold only committed, valid steps.
    """

    def keep(self, records: Sequence[StepRecord]) -> dict[int, str]: ...


def _positive(name: str, value: object) -> int:
    if type(value) is not int or value < 1:
        raise InvalidArgumentError(f"{name} must be a positive int, got {value!r}")
    return value


@dataclass(frozen=True)
class KeepLatest:
    """Keep the ``n`` newest steps (what ``max_to_keep=n`` means)."""

    n: int

    def __post_init__(self) -> None:
        _positive("KeepLatest(n)", self.n)

    def keep(self, records: Sequence[StepRecord]) -> dict[int, str]:
        return {r.step: f"latest {self.n}" for r in records[-self.n :]}


@dataclass(frozen=True)
class KeepEveryNSteps:
    """Keep every step that is a multiple of ``n`` (e.g. permanent milestones every 10,000)."""

    n: int

    def __post_init__(self) -> None:
        _positive("KeepEveryNSteps(n)", self.n)

    def keep(self, records: Sequence[StepRecord]) -> dict[int, str]:
        return {r.step: f"every {self.n} steps" for r in records if r.step % self.n == 0}


@dataclass(frozen=True)
class KeepEveryInterval:
    """Keep one step per ``seconds`` of commit time: the oldest step, then each step committed
    at least ``seconds`` after the previous one kept (e.g. one per hour of a long run)."""

    seconds: float

    def __post_init__(self) -> None:
        if isinstance(self.seconds, bool) or not (
            isinstance(self.seconds, (int, float)) and self.seconds > 0
        ):
            raise InvalidArgumentError(
                f"KeepEveryInterval(seconds) must be a positive number, got {self.seconds!r}"
            )

    def keep(self, records: Sequence[StepRecord]) -> dict[int, str]:
        kept: dict[int, str] = {}
        last: float | None = None
        for record in records:
            if last is None or record.time - last >= self.seconds:
                kept[record.step] = f"one per {self.seconds:g} s"
                last = record.time
        return kept


def _check_mode(mode: object) -> None:
    if mode not in ("min", "max"):
        raise InvalidArgumentError(f"mode must be 'min' or 'max', got {mode!r}")


def ranked(records: Iterable[StepRecord], metric: str, mode: Mode) -> list[StepRecord]:
    """The records that have a finite ``metric``, best first; among equals the newer first."""
    sign = 1.0 if mode == "min" else -1.0
    scored = [(value, r) for r in records if (value := r.metrics.get(metric)) is not None]
    return [r for _, r in sorted(scored, key=lambda pair: (sign * pair[0], -pair[1].step))]


@dataclass(frozen=True)
class KeepBest:
    """Keep the ``k`` best steps by ``metric`` (``mode="min"`` for a loss, ``"max"`` for an
    accuracy). Steps without the metric are not ranked (see the module docstring)."""

    k: int
    metric: str
    mode: Mode = "min"

    def __post_init__(self) -> None:
        _positive("KeepBest(k)", self.k)
        _check_mode(self.mode)

    def keep(self, records: Sequence[StepRecord]) -> dict[int, str]:
        best = ranked(records, self.metric, self.mode)[: self.k]
        return {r.step: f"best {self.k} by {self.metric} ({self.mode})" for r in best}


@dataclass(frozen=True)
class KeepPinned:
    """Keep the steps a user pinned by number (a release candidate, a paper's checkpoint)."""

    steps: frozenset[int]

    def __init__(self, steps: Iterable[int]) -> None:
        object.__setattr__(self, "steps", frozenset(steps))

    def keep(self, records: Sequence[StepRecord]) -> dict[int, str]:
        return {r.step: "pinned" for r in records if r.step in self.steps}


@dataclass(frozen=True)
class AnyOf:
    """Keep a step when any of ``policies`` keeps it; its reasons are all of theirs."""

    policies: tuple[RetentionPolicy, ...]

    def __init__(self, *policies: RetentionPolicy) -> None:
        if not policies:
            raise InvalidArgumentError("AnyOf() needs at least one policy")
        object.__setattr__(self, "policies", policies)

    def keep(self, records: Sequence[StepRecord]) -> dict[int, str]:
        reasons: dict[int, list[str]] = {}
        for policy in self.policies:
            for step, reason in policy.keep(records).items():
                reasons.setdefault(step, []).append(reason)
        return {step: ", ".join(why) for step, why in reasons.items()}


@dataclass(frozen=True)
class RetentionPlan:
    """What retention would do now: each kept step with its reasons, and the steps to delete.

    ``str()`` is the dry run, one line per step, newest first.
    """

    keep: Mapping[int, tuple[str, ...]]
    delete: tuple[int, ...]

    def __str__(self) -> str:
        lines = []
        for step in sorted([*self.keep, *self.delete], reverse=True):
            if step in self.keep:
                lines.append(f"step {step}: keep ({'; '.join(self.keep[step])})")
            else:
                lines.append(f"step {step}: delete (no policy keeps it)")
        return "\n".join(lines) or "no steps"


def plan_retention(
    records: Sequence[StepRecord],
    policy: RetentionPolicy | None,
    protected: Mapping[int, str],
) -> RetentionPlan:
    """Apply ``policy`` to ``records``; ``protected`` steps (with why) are kept whatever it says.

    The newest record is always kept, so a step is deleted only when a newer one is
    committed, and a policy that keeps nothing can never empty the directory.
    """
    ordered = sorted(records, key=lambda r: r.step)
    if policy is None:
        return RetentionPlan({r.step: (NO_POLICY,) for r in ordered}, ())
    chosen = policy.keep(ordered)
    keep: dict[int, tuple[str, ...]] = {}
    delete: list[int] = []
    newest = ordered[-1].step if ordered else None
    for record in ordered:
        reasons = [chosen[record.step]] if record.step in chosen else []
        if record.step in protected:
            reasons.append(protected[record.step])
        if record.step == newest and not reasons:
            reasons.append("newest step")
        if reasons:
            keep[record.step] = tuple(reasons)
        else:
            delete.append(record.step)
    return RetentionPlan(keep, tuple(delete))


def best_step(records: Iterable[StepRecord], metric: str, mode: Mode) -> int | None:
    """The step with the best finite ``metric`` (the newer among equals), or None."""
    _check_mode(mode)
    best = ranked(records, metric, mode)
    return best[0].step if best else None


def finite_metric(value: float) -> float | None:
    """A metric as records hold it: NaN and infinities become None (not ranked)."""
    return value if math.isfinite(value) else None
