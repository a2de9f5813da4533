"""Reading from S3 when things go wrong: each failure is one statevault error that names
the URL and says what to check, and no credential ever appears in it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp

import statevault
from statevault.dcp import Writer
from statevault.engine.fsspec_storage import FsspecStorage
from statevault.errors import (
    CheckpointKindError,
    CheckpointNotFoundError,
    CheckpointPermissionError,
    CheckpointReadError,
    HeaderError,
    InvalidArgumentError,
    NotACheckpointError,
)

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")


def _put(options: dict[str, Any], key: str, data: bytes) -> None:
    FsspecStorage.for_url("s3://bucket", options).fs.pipe_file(f"bucket/{key}", data)


def test_a_missing_object_and_a_missing_bucket_are_named(s3: dict[str, Any]) -> None:
    with pytest.raises(CheckpointNotFoundError, match=r"s3://bucket/none\.safetensors: no such"):
        statevault.load("s3://bucket/none.safetensors", storage_options=s3)
    with pytest.raises(CheckpointNotFoundError, match=r"s3://nobucket/m\.safetensors.*bucket"):
        statevault.Checkpoint("s3://nobucket/m.safetensors", storage_options=s3)


def test_wrong_credentials_say_so_without_showing_them(authenticating: dict[str, Any]) -> None:
    url = "s3://bucket/model.safetensors"
    statevault.save({"w": torch.ones(2)}, url, storage_options=authenticating)
    wrong = {**authenticating, "secret": "not-the-secret-123"}
    with pytest.raises(CheckpointPermissionError, match="credentials") as caught:
        statevault.load(url, storage_options=wrong)
    assert url in str(caught.value) and "not-the-secret-123" not in str(caught.value)
    assert torch.equal(statevault.load(url, storage_options=authenticating)["w"], torch.ones(2))


def test_a_connection_dropped_mid_download_is_a_clear_error(
    s3: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from s3fs import S3FileSystem

    url = "s3://bucket/model.safetensors"
    statevault.save({"a": torch.randn(1000), "b": torch.randn(1000)}, url, storage_options=s3)
    real = S3FileSystem._cat_file
    served: list[int] = []

    async def dropping(self: Any, path: str, **kwargs: Any) -> bytes:
        if served:  # the kind and header went through, in one request; the data does not
            raise ConnectionResetError("Connection reset by peer")
        data: bytes = await real(self, path, **kwargs)
        served.append(len(data))
        return data

    monkeypatch.setattr(S3FileSystem, "_cat_file", dropping)
    with pytest.raises(CheckpointReadError, match="could not be read from the object store") as e:
        statevault.load(url, storage_options=s3)
    assert url in str(e.value) and "reset" in str(e.value) and s3["secret"] not in str(e.value)
    monkeypatch.undo()
    assert statevault.load(url, storage_options=s3)["a"].shape == (1000,)


def test_a_prefix_whose_index_is_missing_is_not_a_checkpoint(s3: dict[str, Any]) -> None:
    state = {f"w{i}": torch.randn(64, 64) for i in range(3)}
    statevault.save(
        state, "s3://bucket/s/model.safetensors", max_shard_size=20_000, storage_options=s3
    )
    FsspecStorage.for_url("s3://bucket", s3).fs.rm_file("bucket/s/model.safetensors.index.json")
    with pytest.raises(CheckpointNotFoundError, match="written last") as caught:
        statevault.load("s3://bucket/s", storage_options=s3)
    assert "model-00001-of-00003.safetensors" in str(caught.value)
    dcp.save({"w": torch.zeros(2)}, storage_writer=Writer("s3://bucket/d", storage_options=s3))
    FsspecStorage.for_url("s3://bucket", s3).fs.rm_file("bucket/d/statevault-dcp.json")
    with pytest.raises(CheckpointNotFoundError, match=r"statevault-dcp\.json"):
        statevault.Checkpoint("s3://bucket/d", storage_options=s3)


def test_a_failed_shard_upload_commits_no_index(
    s3: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = "s3://bucket/f/model.safetensors"
    pending_type = type(FsspecStorage.for_url(url, s3).begin(url))
    real_commit = pending_type.commit

    def failing(self: Any, *, durable: bool) -> None:
        if self._name.endswith("00002-of-00002.safetensors"):
            raise statevault.CheckpointWriteError(f"{self._name}: upload failed (dropped)")
        real_commit(self, durable=durable)

    monkeypatch.setattr(pending_type, "commit", failing)
    state = {f"w{i}": torch.randn(64, 64) for i in range(2)}
    with pytest.raises(statevault.CheckpointWriteError, match="upload failed"):
        statevault.save(state, url, max_shard_size=20_000, storage_options=s3)
    monkeypatch.undo()
    with pytest.raises(CheckpointNotFoundError, match="written last"):
        statevault.load("s3://bucket/f", storage_options=s3)


def test_objects_that_are_no_checkpoint_are_named_for_what_they_are(
    s3: dict[str, Any], tmp_path: Path
) -> None:
    _put(s3, "notes.txt", b"hello, this is text\n" * 4)
    with pytest.raises(NotACheckpointError, match=r"s3://bucket/notes\.txt: not a checkpoint"):
        statevault.load("s3://bucket/notes.txt", storage_options=s3)
    torch.save({"w": torch.ones(2)}, tmp_path / "model.pt")
    _put(s3, "model.pt", (tmp_path / "model.pt").read_bytes())
    with pytest.raises(CheckpointKindError, match="Download it first"):
        statevault.load("s3://bucket/model.pt", storage_options=s3)
    _put(s3, "config.json", b'{"hidden": 8}')
    with pytest.raises(CheckpointKindError, match="JSON file"):
        statevault.load("s3://bucket/config.json", storage_options=s3)


def test_storage_options_for_a_local_path_are_refused_and_the_fix_works(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    statevault.save({"w": torch.ones(2)}, path)
    with pytest.raises(InvalidArgumentError, match="leave it out"):
        statevault.load(path, storage_options={"anon": True})
    with pytest.raises(InvalidArgumentError, match="leave it out"):
        statevault.load_into(torch.nn.Linear(1, 2), path, storage_options={"anon": True})
    assert torch.equal(statevault.load(path)["w"], torch.ones(2))  # the fix: without it


def test_an_index_naming_shards_outside_its_prefix_is_refused(s3: dict[str, Any]) -> None:
    statevault.save(
        {"w": torch.ones(2)}, "s3://bucket/other/secret.safetensors", storage_options=s3
    )
    for name in ("../other/secret.safetensors", "s3://bucket/other/secret.safetensors"):
        index = json.dumps({"metadata": {}, "weight_map": {"w": name}}).encode()
        _put(s3, "run/model.safetensors.index.json", index)
        with pytest.raises(HeaderError, match="not a plain file name"):
            statevault.Checkpoint("s3://bucket/run", storage_options=s3)


def test_an_index_naming_a_missing_shard_names_both(s3: dict[str, Any]) -> None:
    index = json.dumps({"metadata": {}, "weight_map": {"w": "gone.safetensors"}}).encode()
    _put(s3, "run/model.safetensors.index.json", index)
    with pytest.raises(
        CheckpointNotFoundError, match=r"index\.json: names shard gone\.safetensors"
    ):
        statevault.load("s3://bucket/run", storage_options=s3)
