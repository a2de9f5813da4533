"""CheckpointManager on a real S3 endpoint (moto, local): saves commit by a marker created
with If-None-Match, two writers racing one step, the lease, unfinished multipart uploads of
killed writers aborted, and a missing bucket. memory:// covers the rest in
tests/manager/test_object_store.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import boto3
import pytest
from click.testing import CliRunner, Result
from tests.helpers.training_states import assert_state_is, state_for
from tests.remote.test_cli_s3 import _flags

import statevault
from statevault import (
    CheckpointManager,
    CheckpointNotFoundError,
    CheckpointReadError,
    CheckpointWriteError,
    ManagerLockedError,
    StepExistsError,
)
from statevault.cli import main
from statevault.engine.fsspec_storage import FsspecStorage

RUN = "s3://bucket/runs/a"


def cli_run(options: dict[str, Any], *args: str) -> Result:
    result = CliRunner().invoke(main, [*args, *_flags(options)])
    assert options["secret"] not in result.output
    return result


def _client(options: dict[str, Any]) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=options["endpoint_url"],
        aws_access_key_id=options["key"],
        aws_secret_access_key=options["secret"],
        region_name="us-east-1",
    )


def _keys(options: dict[str, Any], prefix: str = "runs/a/") -> list[str]:
    listing = _client(options).list_objects_v2(Bucket="bucket", Prefix=prefix)
    return sorted(item["Key"].removeprefix(prefix) for item in listing.get("Contents", []))


def test_save_retain_and_restore_on_s3(s3: dict[str, Any]) -> None:
    with CheckpointManager(RUN, storage_options=s3, max_to_keep=2) as manager:
        manager.save(1, state_for(1), metrics={"loss": 0.3})
        manager.save(2, state_for(2), blocking=False)
        manager.save(3, state_for(3), blocking=False)
        manager.wait()
        assert ".statevault-manager.lock" in _keys(s3)  # the lease, held while open
    keys = _keys(s3)
    assert [k.split("/")[0] for k in keys] == ["retention.json", *["step-2"] * 2, *["step-3"] * 2]
    assert keys[2] == "step-2/step.json" and keys[1].startswith("step-2/state-")
    with CheckpointManager(RUN, storage_options=s3, read_only=True) as reader:
        assert [info.step for info in reader.steps(verify=True)] == [2, 3]
        assert [info.status for info in reader.steps()] == ["valid", "valid"]
        assert_state_is(reader.restore().state, 3)


def test_two_writers_racing_one_step_commit_it_once(s3: dict[str, Any]) -> None:
    managers = [
        CheckpointManager(RUN, storage_options=s3),
        CheckpointManager(RUN, storage_options=s3, break_lock=True),  # a wrongly broken lease
    ]
    start = threading.Barrier(2)
    outcomes: list[str] = []

    def save(manager: CheckpointManager, step_state: int) -> None:
        start.wait()
        try:
            manager.save(7, state_for(step_state))
            outcomes.append(f"committed {step_state}")
        except StepExistsError:
            outcomes.append("refused")

    threads = [
        threading.Thread(target=save, args=(m, s)) for m, s in zip(managers, (7, 8), strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for manager in managers:
        manager.close()
    assert sorted(outcomes)[1] == "refused" and sorted(outcomes)[0].startswith("committed")
    winner = int(sorted(outcomes)[0].split()[1])
    assert len([k for k in _keys(s3) if k.startswith("step-7/")]) == 2  # loser's upload gone
    with CheckpointManager(RUN, storage_options=s3, read_only=True) as reader:
        assert_state_is(reader.restore(7).state, winner)


def test_a_second_manager_on_s3_is_refused_naming_the_holder(s3: dict[str, Any]) -> None:
    with (
        CheckpointManager(RUN, storage_options=s3),
        pytest.raises(ManagerLockedError, match="another CheckpointManager manages"),
    ):
        CheckpointManager(RUN, storage_options=s3)
    with CheckpointManager(RUN, storage_options=s3):  # the lease was removed by close()
        pass


def test_the_next_writer_aborts_unfinished_uploads_of_the_run_only(s3: dict[str, Any]) -> None:
    client = _client(s3)
    for key in ("runs/a/step-4/state-0123456789abcdef.safetensors", "elsewhere/big.bin"):
        upload = client.create_multipart_upload(Bucket="bucket", Key=key)
        client.upload_part(
            Bucket="bucket", Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=b"x" * 1024
        )
    client.put_object(Bucket="bucket", Key="runs/a/step-4/state-fedcba9876543210.safetensors")
    with CheckpointManager(RUN, storage_options=s3) as manager:
        assert manager.steps() == []
    left = client.list_multipart_uploads(Bucket="bucket").get("Uploads", [])
    assert [upload["Key"] for upload in left] == ["elsewhere/big.bin"]
    assert _keys(s3) == []  # the unmarked upload is gone too (and the lease, on close)


def test_storage_listing_of_a_run_sees_every_level(s3: dict[str, Any]) -> None:
    storage = FsspecStorage.for_url(RUN, s3)
    client = _client(s3)
    for key in ("runs/a/x", "runs/a/step-1/y", "runs/a/step-1/deeper/z", "runs/ab/no"):
        client.put_object(Bucket="bucket", Key=key, Body=b"1")
    assert storage.list_tree(RUN) == ["step-1/deeper/z", "step-1/y", "x"]
    assert storage.list_tree("s3://bucket/runs/none") == []


def test_a_missing_bucket_is_a_clear_error(s3: dict[str, Any]) -> None:
    with pytest.raises(CheckpointNotFoundError, match="no such run"):
        CheckpointManager("s3://nobucket/run", storage_options=s3, read_only=True)
    with pytest.raises(CheckpointWriteError, match="s3://nobucket/run"):
        CheckpointManager("s3://nobucket/run", storage_options=s3)


KILLED_CHILD = textwrap.dedent(
    """
    import json, os, sys
    from statevault import CheckpointManager
    from statevault.manager import object_store
    from tests.helpers.training_states import state_for

    put = object_store.ObjectStore._put

    def killed_before_the_marker(self, name, data, *, exclusive=False):
        if name.endswith("step-2/step.json"):
            os._exit(9)  # as SIGKILL: nothing is cleaned up, the lease stays
        put(self, name, data, exclusive=exclusive)

    object_store.ObjectStore._put = killed_before_the_marker
    manager = CheckpointManager(sys.argv[1], storage_options=json.loads(sys.argv[2]))
    manager.save(1, state_for(1))
    manager.save(2, state_for(2))
    """
)


def test_a_run_killed_before_its_marker_resumes_from_the_last_commit(s3: dict[str, Any]) -> None:
    root = str(Path(__file__).parents[2])
    source = str(Path(statevault.__file__).parents[1])
    child = subprocess.run(
        [sys.executable, "-c", KILLED_CHILD, RUN, json.dumps(s3)],
        env={**os.environ, "PYTHONPATH": os.pathsep.join([source, root])},
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 9, child.stderr
    left = _keys(s3)
    assert ".statevault-manager.lock" in left and len([k for k in left if "step-2/" in k]) == 1
    with CheckpointManager(RUN, storage_options=s3) as manager:  # a dead pid of this host
        assert [info.step for info in manager.steps()] == [1]
        assert_state_is(manager.restore().state, 1)
        manager.save(2, state_for(2))
    assert [k.split("/")[0] for k in _keys(s3)] == [
        "retention.json",
        *["step-1"] * 2,
        *["step-2"] * 2,
    ]


def test_ls_verify_and_inspect_take_a_run_url(s3: dict[str, Any]) -> None:
    with CheckpointManager(RUN, storage_options=s3, max_to_keep=2) as manager:
        for step in (1, 2, 3):
            manager.save(step, state_for(step, numel=8), metrics={"loss": step / 10})
    listed = cli_run(s3, "ls", RUN, "--json")
    assert listed.exit_code == 0, listed.output
    assert [s["step"] for s in json.loads(listed.output)["steps"]] == [2, 3]
    newest = json.loads(cli_run(s3, "verify", RUN, "--json").output)
    assert newest["ok"] and newest["path"].startswith(f"{RUN}/step-3/state-")
    inspected = json.loads(cli_run(s3, "inspect", RUN, "--step", "2", "--json").output)
    assert inspected["state"]["step"] == 2
    missing = cli_run(s3, "verify", RUN, "--step", "1")
    assert missing.exit_code == 2 and "no step 1 (steps: 2, 3)" in missing.output


def test_a_connection_dropped_mid_restore_is_retried_not_taken_for_damage(
    s3: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from s3fs import S3FileSystem

    with CheckpointManager(RUN, storage_options=s3) as manager:
        for step in (1, 2):
            manager.save(step, state_for(step))
    real = S3FileSystem._cat_file
    served: list[int] = []

    async def dropping(self: Any, path: str, **kwargs: Any) -> bytes:
        if "/step-2/state-" in path:
            if served:  # the header went through; the tensors do not
                raise ConnectionResetError("Connection reset by peer")
            served.append(1)
        data: bytes = await real(self, path, **kwargs)
        return data

    with CheckpointManager(RUN, storage_options=s3, read_only=True) as reader:
        monkeypatch.setattr(S3FileSystem, "_cat_file", dropping)
        with pytest.raises(CheckpointReadError, match="step-2"):
            reader.restore()  # not a silent fallback to step 1: step 2 may be fine
        assert [info.status for info in reader.steps()] == ["unverified", "unverified"]
        monkeypatch.undo()
        restored = reader.restore()  # the retry the error asks for
        assert restored.step == 2
        assert_state_is(restored.state, 2)
