"""save and statevault.dcp against a real S3 endpoint (moto, local): ranged reads, whole
uploads, conditional create, and clear errors for a missing bucket, wrong credentials
and a checkpoint whose index (its commit marker) is missing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp

import statevault
from statevault.dcp import Reader, Writer
from statevault.dcp.rank_files import RankFile
from statevault.engine.fsspec_storage import FsspecStorage
from statevault.errors import (
    CheckpointKindError,
    CheckpointNotFoundError,
    CheckpointPermissionError,
    CheckpointWriteError,
    DestinationExistsError,
)

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")


def _fs(options: dict[str, Any]) -> Any:
    return FsspecStorage.for_url("s3://bucket", options).fs


def test_save_uploads_one_whole_object_that_reads_back(s3: dict[str, Any], tmp_path: Path) -> None:
    state = {"w": torch.randn(64, 32), "step": 3}
    statevault.save(state, "s3://bucket/run/model.safetensors", storage_options=s3)
    local = tmp_path / "model.safetensors"
    _fs(s3).get_file("bucket/run/model.safetensors", str(local))
    assert statevault.verify(local).ok
    assert torch.equal(statevault.load(local)["w"], state["w"])


def test_dcp_round_trip_on_s3(s3: dict[str, Any]) -> None:
    state = {"w": torch.randn(16, 8), "b": torch.arange(4), "epoch": 2}
    dcp.save(state, storage_writer=Writer("s3://bucket/ckpt", storage_options=s3))
    names = sorted(p.rsplit("/", 1)[-1] for p in _fs(s3).ls("bucket/ckpt"))
    assert names[-1] == "statevault-dcp.json" and names[0].startswith("rank00000-")
    loaded = {"w": torch.zeros(16, 8), "b": torch.zeros(4, dtype=torch.int64), "epoch": 0}
    dcp.load(loaded, storage_reader=Reader("s3://bucket/ckpt", storage_options=s3))
    assert torch.equal(loaded["w"], state["w"]) and loaded["epoch"] == 2


def test_reading_one_tensor_fetches_only_its_header_and_bytes(s3: dict[str, Any]) -> None:
    big = {f"t{i}": torch.randn(256, 256) for i in range(8)}  # 2 MiB
    statevault.save(big, "s3://bucket/big.safetensors", storage_options=s3)
    storage = FsspecStorage.for_url("s3://bucket", s3)
    fetched: list[int] = []
    real_cat = storage.fs.cat_file

    def counting(path: str, start: int, end: int) -> bytes:
        fetched.append(end - start)
        return bytes(real_cat(path, start=start, end=end))

    storage.fs.cat_file = counting
    rank_file = RankFile(storage, "s3://bucket/big.safetensors")
    entry = rank_file.entry("t5")
    out = torch.empty(256, 256)
    view = memoryview(out.numpy()).cast("B")
    rank_file.read_into(entry, view, 0)
    rank_file.check_whole(entry, view)
    assert torch.equal(out, big["t5"])
    assert len(fetched) == 2 and fetched[1] == 256 * 256 * 4  # the header, then the tensor


def test_conditional_create_lets_one_writer_win(s3: dict[str, Any]) -> None:
    storage = FsspecStorage.for_url("s3://bucket", s3)
    first = storage.begin("s3://bucket/step-1/COMMITTED", exclusive=True)
    first.write(0, [b"one"])
    first.commit(durable=True)
    second = storage.begin("s3://bucket/step-1/COMMITTED", exclusive=True)
    second.write(0, [b"two"])
    with pytest.raises(DestinationExistsError):
        second.commit(durable=True)
    assert storage.open("s3://bucket/step-1/COMMITTED").read(10, 0) == b"one"


def test_missing_bucket_is_a_clear_error(s3: dict[str, Any]) -> None:
    with pytest.raises(CheckpointWriteError, match=r"s3://nobucket/model\.safetensors"):
        statevault.save(
            {"w": torch.zeros(2)}, "s3://nobucket/model.safetensors", storage_options=s3
        )
    with pytest.raises(CheckpointNotFoundError, match="check the path"):
        Reader("s3://nobucket/ckpt", storage_options=s3).read_metadata()


def test_wrong_credentials_are_a_clear_error(authenticating: dict[str, Any]) -> None:
    right = authenticating
    dcp.save(
        {"w": torch.zeros(2)}, storage_writer=Writer("s3://bucket/ckpt", storage_options=right)
    )
    wrong = {**right, "secret": "not-the-secret"}
    with pytest.raises(CheckpointPermissionError, match="credentials") as caught:
        Reader("s3://bucket/ckpt", storage_options=wrong).read_metadata()
    assert "not-the-secret" not in str(caught.value)
    with pytest.raises(CheckpointWriteError, match="upload failed"):
        statevault.save({"w": torch.zeros(2)}, "s3://bucket/x.safetensors", storage_options=wrong)


def test_a_checkpoint_without_its_index_is_not_loadable(s3: dict[str, Any]) -> None:
    dcp.save({"w": torch.zeros(2)}, storage_writer=Writer("s3://bucket/ckpt", storage_options=s3))
    _fs(s3).rm_file("bucket/ckpt/statevault-dcp.json")
    with pytest.raises(CheckpointNotFoundError, match="written last"):
        Reader("s3://bucket/ckpt", storage_options=s3).read_metadata()


def test_a_failed_upload_leaves_the_previous_object_and_no_spool(
    s3: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = "s3://bucket/model.safetensors"
    statevault.save({"w": torch.ones(4)}, url, storage_options=s3)
    storage = FsspecStorage.for_url(url, s3)
    spools: list[str] = []

    def dropped(local: str, remote: str, **options: Any) -> None:
        spools.append(local)
        raise ConnectionResetError("connection reset by peer")

    monkeypatch.setattr(type(storage.fs), "put_file", lambda self, *a, **k: dropped(*a, **k))
    with pytest.raises(CheckpointWriteError, match="previous object, if any, is intact"):
        statevault.save({"w": torch.zeros(4)}, url, storage_options=s3)
    monkeypatch.undo()
    assert spools and not Path(spools[0]).exists()
    rank_file = RankFile(FsspecStorage.for_url(url, s3), url)
    out = torch.empty(4)
    view = memoryview(out.numpy()).cast("B")
    rank_file.read_into(rank_file.entry("w"), view, 0)
    assert torch.equal(out, torch.ones(4))


def test_a_remote_file_cannot_be_mapped_and_its_local_copy_can(
    s3: dict[str, Any], tmp_path: Path
) -> None:
    state = {"w": torch.randn(8, 8)}
    url = "s3://bucket/mapped/model.safetensors"
    statevault.save(state, url, storage_options=s3)
    with pytest.raises(CheckpointKindError, match=r"remote object, which cannot be memory-mapped"):
        statevault.load(url, storage_options=s3, mmap=True)
    assert torch.equal(statevault.load(url, storage_options=s3)["w"], state["w"])  # fix 1
    local = tmp_path / "model.safetensors"
    _fs(s3).get_file("bucket/mapped/model.safetensors", str(local))  # fix 2: download, map
    assert torch.equal(statevault.load(local, mmap=True)["w"], state["w"])
