"""Retention policies on plain lists: no disk, no torch."""

from __future__ import annotations

import math

import pytest

from statevault import (
    AnyOf,
    InvalidArgumentError,
    KeepBest,
    KeepEveryInterval,
    KeepEveryNSteps,
    KeepLatest,
    KeepPinned,
    StepRecord,
)
from statevault.manager.policies import best_step, finite_metric, plan_retention


def records(*steps: int, loss: dict[int, float | None] | None = None) -> list[StepRecord]:
    loss = loss or {}
    return [
        StepRecord(step, time=float(step), metrics={"loss": loss[step]} if step in loss else {})
        for step in steps
    ]


def test_keep_latest_keeps_the_n_newest() -> None:
    assert set(KeepLatest(2).keep(records(1, 2, 3, 4))) == {3, 4}
    assert set(KeepLatest(5).keep(records(1, 2))) == {1, 2}


def test_keep_every_n_steps_keeps_multiples() -> None:
    assert set(KeepEveryNSteps(10).keep(records(5, 10, 15, 20, 21))) == {10, 20}


def test_keep_every_interval_keeps_one_step_per_interval() -> None:
    timed = [StepRecord(step, time=t) for step, t in [(1, 0), (2, 30), (3, 59), (4, 61), (5, 100)]]
    # 1 (first), then 4 (61 s after 1), then nothing until 121 s
    assert set(KeepEveryInterval(60).keep(timed)) == {1, 4}


def test_keep_best_ranks_by_metric_and_mode() -> None:
    rs = records(1, 2, 3, 4, loss={1: 0.5, 2: 0.1, 3: 0.9, 4: 0.3})
    assert set(KeepBest(2, "loss").keep(rs)) == {2, 4}
    assert set(KeepBest(2, "loss", mode="max").keep(rs)) == {3, 1}


def test_steps_without_the_metric_or_with_nan_are_not_ranked() -> None:
    rs = records(1, 2, 3, loss={1: 0.5, 3: finite_metric(math.nan)})
    assert finite_metric(math.inf) is None
    assert set(KeepBest(3, "loss").keep(rs)) == {1}
    assert best_step(rs, "loss", "min") == 1
    assert best_step(records(1, 2), "loss", "min") is None


def test_equal_metrics_prefer_the_newer_step() -> None:
    rs = records(1, 2, 3, loss={1: 0.2, 2: 0.2, 3: 0.4})
    assert best_step(rs, "loss", "min") == 2


def test_keep_pinned() -> None:
    assert set(KeepPinned([2, 9]).keep(records(1, 2, 3))) == {2}


def test_any_of_keeps_the_union_with_every_reason() -> None:
    policy = AnyOf(KeepLatest(1), KeepEveryNSteps(2), KeepPinned([1]))
    kept = policy.keep(records(1, 2, 3, 4, 5))
    assert set(kept) == {1, 2, 4, 5}
    assert kept[1] == "pinned"
    assert kept[4] == "every 2 steps"
    assert kept[5] == "latest 1"


def test_plan_deletes_what_no_policy_or_protection_keeps() -> None:
    plan = plan_retention(records(1, 2, 3, 4), KeepLatest(1), protected={2: "resumed from"})
    assert plan.delete == (1, 3)
    assert plan.keep == {2: ("resumed from",), 4: ("latest 1",)}
    assert str(plan).splitlines() == [
        "step 4: keep (latest 1)",
        "step 3: delete (no policy keeps it)",
        "step 2: keep (resumed from)",
        "step 1: delete (no policy keeps it)",
    ]


def test_plan_never_deletes_the_newest_step_even_if_no_policy_keeps_it() -> None:
    plan = plan_retention(records(1, 2, 3), KeepPinned([1]), protected={})
    assert plan.delete == (2,)
    assert plan.keep[3] == ("newest step",)


def test_plan_without_policy_keeps_everything() -> None:
    plan = plan_retention(records(1, 2), None, protected={})
    assert plan.delete == ()
    assert set(plan.keep) == {1, 2}


def test_plan_of_no_steps() -> None:
    plan = plan_retention([], KeepLatest(1), protected={})
    assert plan.delete == () and str(plan) == "no steps"


@pytest.mark.parametrize(
    "build",
    [
        lambda: KeepLatest(0),
        lambda: KeepLatest(True),
        lambda: KeepEveryNSteps(-1),
        lambda: KeepEveryInterval(0),
        lambda: KeepBest(1, "loss", mode="lowest"),  # type: ignore[arg-type]
        lambda: AnyOf(),
    ],
)
def test_bad_policy_arguments_are_refused(build: object) -> None:
    with pytest.raises(InvalidArgumentError):
        build()  # type: ignore[operator]
