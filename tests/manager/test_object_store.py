"""CheckpointManager on an object store (fsspec's ``memory://``, in this process): a step is
visible only once its marker exists, failed uploads leave nothing, deletion hides a step
first, the lease keeps a second writer out. The same against a real S3 endpoint (moto) is
in tests/remote/test_manager_s3.py."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import pytest
from click.testing import CliRunner
from tests.helpers.storage import FaultyStorage
from tests.helpers.training_states import assert_state_is, state_for

from statevault import (
    CheckpointManager,
    CheckpointNotFoundError,
    CheckpointWriteError,
    InvalidArgumentError,
    ManagerLockedError,
    PreemptionHandler,
    StepExistsError,
)
from statevault.cli import main
from statevault.engine.storage import Name, Storage
from statevault.manager import object_store

FS = fsspec.filesystem("memory")


@pytest.fixture
def run() -> Iterator[str]:
    """A fresh run URL in fsspec's in-memory file system, removed afterwards."""
    url = f"memory://runs/{uuid.uuid4().hex}"
    yield url
    if FS.exists(url):
        FS.rm(url, recursive=True)


def objects(url: str) -> list[str]:
    """Every object of the run, relative to it."""
    prefix = FS._strip_protocol(url) + "/"
    return sorted(name.removeprefix(prefix) for name in FS.find(url))


def step_objects(url: str, step: int) -> list[str]:
    return [name.split("/", 1)[1] for name in objects(url) if name.startswith(f"step-{step}/")]


def test_save_restore_and_retention_on_an_object_store(run: str) -> None:
    with CheckpointManager(run, max_to_keep=2) as manager:
        manager.save(1, state_for(1), metrics={"loss": 0.5})
        for step in (2, 3):
            manager.save(step, state_for(step), blocking=False)
        manager.wait()
        assert [info.step for info in manager.steps()] == [2, 3]
        assert str(manager.step_path(3)).startswith(f"{run}/step-3/state-")
    names = objects(run)
    assert ".statevault-manager.lock" not in names  # released on close
    assert [n for n in names if not n.startswith("step-")] == ["retention.json"]
    for step in (2, 3):
        state_files = [n for n in step_objects(run, step) if n.startswith("state-")]
        assert len(state_files) == 1 and "step.json" in step_objects(run, step)
        marker = json.loads(FS.cat_file(f"{run}/step-{step}/step.json"))
        assert marker["file"] == state_files[0] and marker["step"] == step
    with CheckpointManager(run) as manager:
        assert manager.latest_step() == 3
        restored = manager.restore()
        assert restored.step == 3
        assert_state_is(restored.state, 3)
        assert_state_is(manager.restore(2).state, 2)


def test_a_step_without_its_marker_is_invisible_and_removed_by_the_next_writer(run: str) -> None:
    with CheckpointManager(run) as manager:
        for step in (1, 2):
            manager.save(step, state_for(step))
    FS.rm_file(f"{run}/step-2/step.json")  # as a save killed before its commit leaves it
    with CheckpointManager(run, read_only=True) as reader:
        assert [info.step for info in reader.steps()] == [1]
        assert reader.restore().step == 1
    assert len(step_objects(run, 2)) == 1  # a reader removes nothing
    with CheckpointManager(run) as manager:
        assert manager.latest_step() == 1
    assert step_objects(run, 2) == []
    assert sorted(step_objects(run, 1))[-1] == "step.json"


def test_a_failed_upload_mid_step_leaves_nothing_and_keeps_the_previous_step(
    run: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    faulty: dict[str, FaultyStorage] = {}

    def failing(url: str, options: Any) -> Storage:
        faulty["storage"] = FaultyStorage(inner=real(url, options))
        return faulty["storage"]

    real = object_store.object_storage
    monkeypatch.setattr(object_store, "object_storage", failing)
    with CheckpointManager(run, max_to_keep=1) as manager:
        manager.save(1, state_for(1))
        before = objects(run)
        storage = faulty["storage"]
        storage.fail_write = len(storage.write_threads) + 2  # the second write of the next step
        with pytest.raises(CheckpointWriteError, match="injected failure"):
            manager.save(2, state_for(2))
        assert "aborted" in storage.ended
        assert objects(run) == before  # nothing of step 2; step 1 is not deleted
        assert [info.step for info in manager.steps()] == [1]
        storage.fail_write, storage.fail_commit = None, True  # now the upload itself fails
        with pytest.raises(CheckpointWriteError, match="injected failure"):
            manager.save(2, state_for(2), blocking=False)
            manager.wait()
        assert objects(run) == before
        storage.fail_commit = False
        manager.save(2, state_for(2))  # the same step saves once the store works again
        assert manager.latest_step() == 2
    with CheckpointManager(run, read_only=True) as reader:
        assert_state_is(reader.restore().state, 2)


class RemovalOrder(FaultyStorage):
    """Records each removal; ``fail_after_marker`` stops a deletion after its marker."""

    def __init__(self, inner: Storage) -> None:
        super().__init__(inner=inner)
        self.removed: list[str] = []
        self.fail_after_marker = False

    def remove(self, name: Name) -> None:
        name = os.fspath(name)
        if self.fail_after_marker and not name.endswith(("step.json", ".lock")):
            raise OSError("killed mid-deletion")
        self.removed.append(name.rsplit("/", 2)[-2] + "/" + name.rsplit("/", 1)[-1])
        self.inner.remove(name)


def test_retention_removes_the_marker_first(run: str, monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[RemovalOrder] = []

    def recording(url: str, options: Any) -> Storage:
        made.append(RemovalOrder(real(url, options)))
        return made[-1]

    real = object_store.object_storage
    monkeypatch.setattr(object_store, "object_storage", recording)
    with CheckpointManager(run, max_to_keep=1) as manager:
        manager.save(1, state_for(1))
        manager.save(2, state_for(2))
        first = [name for name in made[0].removed if name.startswith("step-1/")]
        assert first[0] == "step-1/step.json" and first[1].startswith("step-1/state-")
        made[0].fail_after_marker = True  # a deletion killed right after the marker
        manager.save(3, state_for(3))
        assert [info.step for info in manager.steps()] == [3]
    assert [name for name in objects(run) if name.startswith("step-2/")] != []  # half deleted
    with CheckpointManager(run, read_only=True) as reader:
        assert [info.step for info in reader.steps()] == [3]  # and invisible
    with CheckpointManager(run):
        pass
    assert step_objects(run, 2) == []  # a leftover, removed by the next writer


def test_a_damaged_step_is_skipped_on_restore_and_shown_by_ls(
    run: str, caplog: pytest.LogCaptureFixture
) -> None:
    with CheckpointManager(run) as manager:
        for step in (1, 2):
            manager.save(step, state_for(step))
        state_file = str(manager.step_path(2))
    data = bytearray(FS.cat_file(state_file))
    data[-100] ^= 0x40  # one bit of a tensor
    FS.pipe_file(state_file, bytes(data))
    with CheckpointManager(run, read_only=True) as reader:
        assert reader.latest_step() == 1
        assert_state_is(reader.restore().state, 1)
        damaged = reader.steps()[1]
        assert damaged.status == "damaged" and "checksum" in str(damaged.problem)
    result = CliRunner().invoke(main, ["ls", run])
    assert result.exit_code == 1 and "damaged" in result.output
    FS.pipe_file(state_file, bytes(data[:-50]))  # cut short: named by its URL in the log
    with CheckpointManager(run, read_only=True) as reader, caplog.at_level(logging.WARNING):
        assert reader.restore().step == 1
    assert f"step 2 is damaged ({state_file}: file is truncated" in caplog.text


def test_two_writers_cannot_both_commit_one_step(run: str) -> None:
    first = CheckpointManager(run)
    second = CheckpointManager(run, break_lock=True)  # what a wrongly broken lease allows
    try:
        first.save(5, state_for(5))
        with pytest.raises(StepExistsError, match="committed by another writer"):
            second.save(5, state_for(6))
        assert len(step_objects(run, 5)) == 2  # the winner's state file and marker only
        second.save(6, state_for(6))
    finally:
        first.close()  # its lease was broken: it must not remove the one that replaced it
        assert FS.exists(f"{run}/.statevault-manager.lock")
        second.close()
    assert not FS.exists(f"{run}/.statevault-manager.lock")
    with CheckpointManager(run, read_only=True) as reader:
        assert_state_is(reader.restore(5).state, 5)
        assert_state_is(reader.restore(6).state, 6)


def test_a_second_manager_is_refused_with_the_lease_holder(run: str) -> None:
    with CheckpointManager(run) as manager:
        manager.save(1, state_for(1))
        holder = f"pid {os.getpid()} on host {socket.gethostname()}"
        with pytest.raises(ManagerLockedError, match=holder):
            CheckpointManager(run)
        with CheckpointManager(run, read_only=True) as reader:  # readers need no lease
            assert reader.latest_step() == 1
    with CheckpointManager(run) as manager:  # released on close
        assert manager.latest_step() == 1


def _lease(run: str, host: str, pid: int) -> None:
    record = {"host": host, "pid": pid, "since": "2026-01-01T00:00:00+0000", "token": "x"}
    FS.pipe_file(f"{run}/.statevault-manager.lock", json.dumps(record).encode())


def test_a_stale_lease_from_another_host_is_broken_only_on_request(run: str) -> None:
    _lease(run, "other-host", 4242)
    with pytest.raises(ManagerLockedError, match="pid 4242 on host other-host") as refused:
        CheckpointManager(run)
    assert "break_lock=True" in str(refused.value)
    with CheckpointManager(run, break_lock=True) as manager:  # the suggested fix
        manager.save(1, state_for(1))
        lease = json.loads(FS.cat_file(f"{run}/.statevault-manager.lock"))
        assert lease["pid"] == os.getpid() and lease["host"] == socket.gethostname()
    assert not FS.exists(f"{run}/.statevault-manager.lock")


def test_the_lease_of_a_dead_process_on_this_host_is_taken_over(run: str) -> None:
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    _lease(run, socket.gethostname(), int(child.stdout))  # that pid has exited
    with CheckpointManager(run) as manager:
        manager.save(1, state_for(1))
    _lease(run, socket.gethostname(), os.getppid())  # a live process of this host
    with pytest.raises(ManagerLockedError, match=f"pid {os.getppid()}"):
        CheckpointManager(run)


def test_preemption_marks_steps_on_an_object_store(run: str) -> None:
    with CheckpointManager(run) as manager:
        handler = PreemptionHandler(manager, deadline=30.0, cooperative=True)
        with handler:
            manager.save(1, state_for(1, numel=8), blocking=False)
            os.kill(os.getpid(), signal.SIGTERM)
            assert handler.finish(2, state_for(2, numel=8)) == 2
        assert [(i.step, i.preempted) for i in manager.steps()] == [(1, True), (2, True)]
    with CheckpointManager(run, read_only=True) as reader:
        assert [(i.step, i.preempted) for i in reader.steps()] == [(1, True), (2, True)]
        assert reader.restore().preempted


def test_ls_lists_a_run_on_an_object_store(run: str) -> None:
    with CheckpointManager(run, max_to_keep=2) as manager:
        for step in (1, 2, 3):
            manager.save(step, state_for(step, numel=8), metrics={"loss": step / 10})
    result = CliRunner().invoke(main, ["ls", run, "--json"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)["steps"]
    assert [(s["step"], s["status"], s["kept"]) for s in listed] == [
        (2, "valid", ["latest 2"]),
        (3, "valid", ["latest 2", "newest step, newest commit of this run"]),
    ]


def test_a_reader_of_a_missing_run_and_storage_options_on_a_directory_are_refused(
    run: str, tmp_path: Path
) -> None:
    with pytest.raises(CheckpointNotFoundError, match="no such run"):
        CheckpointManager(run, read_only=True)
    with pytest.raises(InvalidArgumentError, match="leave it out for a local directory"):
        CheckpointManager(tmp_path, storage_options={"anon": True})
    with CheckpointManager(tmp_path) as manager:  # the suggested fix
        manager.save(1, state_for(1, numel=8))
        assert manager.latest_step() == 1


def test_a_marker_whose_state_file_is_gone_is_a_damaged_step_left_in_place(run: str) -> None:
    with CheckpointManager(run) as manager:
        for step in (1, 2):
            manager.save(step, state_for(step, numel=8))
        FS.rm_file(str(manager.step_path(2)))
    for read_only in (True, False):
        with CheckpointManager(run, read_only=read_only) as manager:
            damaged = manager.steps()[1]
            assert damaged.status == "damaged" and str(damaged.problem).endswith("is missing")
            assert manager.restore().step == 1
    assert step_objects(run, 2) == ["step.json"]  # not removed: for the user to look at
