"""CheckpointManager end to end on a real directory: save, restore, retention, lock, damage."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy
import pytest
import torch
from tests.helpers.training_states import assert_state_is, state_for

import statevault
from statevault import (
    CheckpointManager,
    InvalidArgumentError,
    KeepBest,
    KeepEveryNSteps,
    ManagerLockedError,
    StepExistsError,
    StepNotFoundError,
)
from statevault.manager import layout


def test_restore_returns_the_newest_step_bit_exactly(tmp_path: Path) -> None:
    with CheckpointManager(tmp_path) as manager:
        for step in (1, 2, 3):
            manager.save(step, state_for(step), metrics={"loss": 1.0 / step})
    with CheckpointManager(tmp_path) as manager:
        assert manager.latest_step() == 3
        restored = manager.restore()
        assert restored.step == 3 and restored.metrics == {"loss": pytest.approx(1 / 3)}
        assert_state_is(restored.state, 3)
        assert_state_is(manager.restore(2).state, 2)
    assert sorted(os.listdir(tmp_path)) == [
        layout.LOCK_FILE,
        layout.RETENTION_FILE,
        "step-1",
        "step-2",
        "step-3",
    ]


def test_async_save_writes_the_same_bytes_as_a_sync_save(tmp_path: Path) -> None:
    state = state_for(5)
    state["tied"] = state["model"]["weight"]  # a tie must survive the snapshot
    state["view"] = state["model"]["weight"][::2]  # a non-contiguous view
    state["module"] = torch.nn.BatchNorm1d(3).state_dict()  # keeps torch's version table
    state["conj"] = torch.randn(4, dtype=torch.complex64).conj()
    state["empty"] = torch.zeros(0, 3)
    state["numpy"] = numpy.arange(5, dtype=numpy.int16)
    state["extras"] = [1.5, "text", None, (True, numpy.float64(2.0)), torch.Size([2])]
    with CheckpointManager(tmp_path / "a") as sync, CheckpointManager(tmp_path / "b") as background:
        sync.save(5, state, metadata={"run": "x"})
        background.save(5, state, metadata={"run": "x"}, blocking=False)
        background.wait()
        assert sync.step_path(5).read_bytes() == background.step_path(5).read_bytes()


def test_live_tensors_may_change_right_after_an_async_save_returns(tmp_path: Path) -> None:
    state = state_for(1)
    with CheckpointManager(tmp_path) as manager:
        manager.save(1, state, blocking=False)
        state["model"]["weight"].fill_(123.0)  # training goes on at once
        state["model"]["bias"].zero_()
        manager.wait()
        assert_state_is(manager.restore(1).state, 1)


def test_staging_memory_is_reused_across_saves(tmp_path: Path) -> None:
    with CheckpointManager(tmp_path, max_to_keep=2) as manager:
        manager.save(1, state_for(1), blocking=False)
        manager.wait()
        capacity = manager._background.staging.capacity()
        for step in range(2, 5):
            manager.save(step, state_for(step), blocking=False)
        manager.wait()
        assert manager._background.staging.capacity() == capacity
    # the staged bytes: both tensors of 4096 floats, the bias, the RNG state (64-byte aligned)
    assert 2 * 4096 * 4 < capacity < 2 * 4096 * 4 + 16 * 4 + 5056 + 4 * 64


def test_at_most_max_in_flight_saves_wait_for_the_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    release = threading.Event()
    commit = layout.commit

    def slow_commit(temporary: Path, directory: Path, step: int) -> Path:
        release.wait(30)
        return commit(temporary, directory, step)

    monkeypatch.setattr(layout, "commit", slow_commit)
    with CheckpointManager(tmp_path, max_to_keep=5, max_in_flight=1) as manager:
        manager.save(1, state_for(1), blocking=False)
        second = threading.Thread(
            target=manager.save, args=(2, state_for(2)), kwargs={"blocking": False}
        )
        second.start()
        second.join(0.5)
        assert second.is_alive()  # back-pressure: the slot is busy until step 1 is written
        assert manager._background.steps() == [1]
        release.set()
        second.join(30)
        manager.wait()
        assert [info.step for info in manager.steps()] == [1, 2]


def test_a_background_failure_is_raised_by_the_next_call(tmp_path: Path) -> None:
    with CheckpointManager(tmp_path) as manager:
        # the snapshot takes it; statevault.save refuses a tuple key in the background
        manager.save(1, {(1, 2): torch.zeros(2)}, blocking=False)
        with pytest.raises(statevault.UnsupportedObjectError, match="dict key"):
            manager.wait()
        manager.save(2, state_for(2))  # raised once, then the manager goes on
        assert manager.latest_step() == 2
        assert [info.step for info in manager.steps()] == [2]


def test_background_failure_is_raised_on_close(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path)
    manager.save(1, {(1, 2): torch.zeros(2)}, blocking=False)
    with pytest.raises(statevault.UnsupportedObjectError, match="dict key"):
        manager.close()
    assert not (tmp_path / "step-1").exists()


def test_retention_keeps_latest_best_and_policy_steps(tmp_path: Path) -> None:
    losses = {1: 0.9, 2: 0.1, 3: 0.8, 4: 0.7, 5: 0.6, 6: 0.5}
    policy = KeepEveryNSteps(3)
    with CheckpointManager(tmp_path, max_to_keep=2, policy=policy, monitor="loss") as manager:
        for step, loss in losses.items():
            manager.save(step, state_for(step, numel=8), metrics={"loss": loss})
        assert manager.best_step() == 2
        assert [info.step for info in manager.steps()] == [2, 3, 5, 6]
        kept = {info.step: info.kept for info in manager.steps()}
        assert "best by loss (min)" in kept[2][-1]
        assert kept[3] == ("every 3 steps",)
    # a read-only manager shows what the writer's retention decided
    with CheckpointManager(tmp_path, read_only=True) as reader:
        assert reader.steps()[1].kept == ("every 3 steps",)


def test_retention_never_deletes_the_step_this_run_resumed_from(tmp_path: Path) -> None:
    with CheckpointManager(tmp_path) as manager:
        manager.save(1, state_for(1, numel=8))
    with CheckpointManager(tmp_path, max_to_keep=1) as manager:
        assert manager.restore().step == 1
        manager.save(2, state_for(2, numel=8))
        manager.save(3, state_for(3, numel=8))
        assert [info.step for info in manager.steps()] == [1, 3]
        assert manager.steps()[0].kept == ("resumed from",)


def test_keep_best_without_the_metric_follows_the_stated_rule(tmp_path: Path) -> None:
    with CheckpointManager(tmp_path, policy=KeepBest(1, "acc", mode="max")) as manager:
        manager.save(1, state_for(1, numel=8), metrics={"acc": 0.5})
        manager.save(2, state_for(2, numel=8))  # no metric: not ranked
        manager.save(3, state_for(3, numel=8), metrics={"acc": float("nan")})
        # 1 is the best by acc; 3 is the newest; 2 is neither, so it goes
        assert [info.step for info in manager.steps()] == [1, 3]


def test_a_damaged_latest_step_falls_back_with_a_logged_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with CheckpointManager(tmp_path) as manager:
        manager.save(1, state_for(1))
        manager.save(2, state_for(2))
    damaged = tmp_path / "step-2" / layout.STATE_FILE
    data = bytearray(damaged.read_bytes())
    data[-100] ^= 0x01  # one bit of tensor data
    damaged.write_bytes(bytes(data))
    with CheckpointManager(tmp_path) as manager, caplog.at_level(logging.WARNING):
        restored = manager.restore()
        assert restored.step == 1
        assert_state_is(restored.state, 1)
        assert "step 2 is damaged" in caplog.text and "checksum" in caplog.text.lower()
        assert manager.latest_step() == 1
        assert [info.status for info in manager.steps()] == ["valid", "damaged"]  # 1 was read
        with pytest.raises(statevault.CorruptFileError, match="step-2"):
            manager.restore(2)


def test_latest_step_verifies_checksums(tmp_path: Path) -> None:
    with CheckpointManager(tmp_path) as manager:
        manager.save(1, state_for(1))
        manager.save(2, state_for(2))
    (tmp_path / "step-2" / layout.STATE_FILE).write_bytes(b"not a checkpoint")
    with CheckpointManager(tmp_path, read_only=True) as reader:
        assert reader.latest_step() == 1
        infos = reader.steps(verify=True)
        assert [i.status for i in infos] == ["valid", "damaged"]


def test_a_step_without_a_manifest_is_damaged_not_restored(tmp_path: Path) -> None:
    with CheckpointManager(tmp_path) as manager:
        manager.save(1, state_for(1))
        manager.save(2, state_for(2))
    (tmp_path / "step-2" / layout.MANIFEST_FILE).unlink()
    with CheckpointManager(tmp_path) as manager:
        assert manager.restore().step == 1
        assert manager.steps()[1].problem == "step.json is missing"


def test_no_valid_step_names_the_damaged_ones(tmp_path: Path) -> None:
    with CheckpointManager(tmp_path) as manager:
        manager.save(7, state_for(7))
    (tmp_path / "step-7" / layout.STATE_FILE).write_bytes(b"")
    with CheckpointManager(tmp_path) as manager:
        with pytest.raises(StepNotFoundError, match="step 7: ") as caught:
            manager.restore()
        assert isinstance(caught.value, FileNotFoundError)
        with pytest.raises(StepNotFoundError, match="no step 3"):
            manager.restore(3)


def test_leftovers_of_killed_saves_are_removed_on_start(tmp_path: Path) -> None:
    with CheckpointManager(tmp_path) as manager:
        manager.save(1, state_for(1))
    (tmp_path / ".step-2.123.abcdef.tmp").mkdir()
    (tmp_path / ".step-2.123.abcdef.tmp" / layout.STATE_FILE).write_bytes(b"partial")
    (tmp_path / ".step-0.abcdef.deleting").mkdir()
    (tmp_path / "notes.txt").write_text("the user's own file")
    with CheckpointManager(tmp_path, read_only=True) as reader:  # a reader touches nothing
        assert (tmp_path / ".step-2.123.abcdef.tmp").exists()
        assert reader.latest_step() == 1
    with CheckpointManager(tmp_path) as manager:
        assert manager.latest_step() == 1
    assert sorted(os.listdir(tmp_path)) == [
        layout.LOCK_FILE,
        "notes.txt",
        layout.RETENTION_FILE,
        "step-1",
    ]


def test_a_second_manager_is_refused_naming_the_holder(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, statevault; m = statevault.CheckpointManager(sys.argv[1]); "
            "print('ready', flush=True); sys.stdin.read()",
            str(tmp_path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
        with pytest.raises(ManagerLockedError, match=f"pid {holder.pid} on host"):
            CheckpointManager(tmp_path)
        CheckpointManager(tmp_path, read_only=True).close()  # readers need no lock
    finally:
        holder.communicate("")
    CheckpointManager(tmp_path).close()  # the lock went with its process


def test_saving_an_existing_step_is_refused(tmp_path: Path) -> None:
    with CheckpointManager(tmp_path) as manager:
        manager.save(1, state_for(1))
        with pytest.raises(StepExistsError, match="step 1 is already committed"):
            manager.save(1, state_for(1), blocking=False)


@pytest.mark.parametrize(
    ("step", "metrics"),
    [(-1, None), (1.5, None), (True, None), (1, {"loss": "low"}), (1, {"loss": True})],
)
def test_bad_arguments_are_refused_before_anything_is_written(
    tmp_path: Path, step: object, metrics: object
) -> None:
    with CheckpointManager(tmp_path) as manager:
        with pytest.raises(InvalidArgumentError):
            manager.save(step, state_for(1), metrics=metrics, blocking=False)  # type: ignore[arg-type]
        assert manager.steps() == []


def test_metrics_accept_tensors_and_numpy_numbers(tmp_path: Path) -> None:
    import numpy

    with CheckpointManager(tmp_path, monitor="loss") as manager:
        manager.save(1, state_for(1, numel=8), metrics={"loss": torch.tensor(0.25)})
        manager.save(2, state_for(2, numel=8), metrics={"loss": numpy.float32(0.5)})
        assert manager.steps()[0].metrics == {"loss": 0.25}
        assert manager.best_step() == 1


def test_unsupported_state_is_refused_at_once_in_async_saves(tmp_path: Path) -> None:
    with CheckpointManager(tmp_path) as manager:
        with pytest.raises(statevault.UnsupportedObjectError, match="model"):
            manager.save(1, {"model": torch.nn.Linear(2, 2)}, blocking=False)
        with pytest.raises(statevault.UnsupportedObjectError, match="x"):
            manager.save(1, {"x": torch.zeros(2).to_sparse()}, blocking=False)


def test_restore_into_live_objects(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    with CheckpointManager(tmp_path) as manager:
        manager.save(1, {"model": model.state_dict(), "optim": optimizer.state_dict()})
        fresh = torch.nn.Linear(3, 2)
        fresh_optimizer = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
        restored = manager.restore(into={"model": fresh, "optim": fresh_optimizer})
        assert restored.reports["model"] is not None and restored.reports["optim"] is None
        assert torch.equal(fresh.weight, model.weight)
        momentum = fresh_optimizer.state_dict()["state"][0]["momentum_buffer"]
        assert torch.equal(momentum, optimizer.state_dict()["state"][0]["momentum_buffer"])
        with pytest.raises(InvalidArgumentError, match="has no 'sched'"):
            manager.restore(into={"sched": fresh_optimizer})


def test_delete_and_read_only_and_closed_managers(tmp_path: Path) -> None:
    with CheckpointManager(tmp_path) as manager:
        manager.save(1, state_for(1, numel=8))
        manager.save(2, state_for(2, numel=8))
        manager.delete(1)
        assert [info.step for info in manager.steps()] == [2]
        with pytest.raises(StepNotFoundError):
            manager.delete(1)
    with (
        CheckpointManager(tmp_path, read_only=True) as reader,
        pytest.raises(InvalidArgumentError, match="read-only"),
    ):
        reader.save(3, state_for(3, numel=8))
    with pytest.raises(InvalidArgumentError, match="closed"):
        manager.latest_step()
    with pytest.raises(statevault.CheckpointNotFoundError):
        CheckpointManager(tmp_path / "missing", read_only=True)
