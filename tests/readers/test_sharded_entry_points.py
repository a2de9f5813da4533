"""Every entry point takes a sharded checkpoint written by statevault: the directory or its index."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import statevault


def model() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(60, 60), nn.ReLU(), nn.Linear(60, 60), nn.Linear(60, 4))
    return net


@pytest.fixture
def sharded(tmp_path: Path) -> Path:
    directory = tmp_path / "out"
    directory.mkdir()
    statevault.save(model(), directory / "model.safetensors", max_shard_size=15_000)
    assert len(list(directory.glob("model-*-of-*.safetensors"))) == 3
    return directory


@pytest.fixture(params=["directory", "index"])
def source(request: pytest.FixtureRequest, sharded: Path) -> Path:
    return sharded if request.param == "directory" else sharded / "model.safetensors.index.json"


def test_load_into_check_and_build(source: Path) -> None:
    expected = model().state_dict()
    target = nn.Sequential(nn.Linear(60, 60), nn.ReLU(), nn.Linear(60, 60), nn.Linear(60, 4))
    assert statevault.check(target, source).ok
    assert statevault.load_into(target, source).ok
    assert all(torch.equal(target.state_dict()[k], v) for k, v in expected.items())
    built = statevault.build_model(model, source)
    assert all(torch.equal(built.state_dict()[k], v) for k, v in expected.items())


def test_checkpoint_inspect_verify_diff(source: Path, sharded: Path) -> None:
    with statevault.Checkpoint(source) as ckpt:
        assert ckpt.kind == statevault.CheckpointKind.SHARDED
        assert sorted(ckpt.keys()) == sorted(model().state_dict())
    summary = statevault.inspect(source)
    assert summary.has_checksums and len(summary.tensors) == 6
    assert statevault.verify(source).ok
    assert statevault.diff(source, sharded).ok


def test_verify_names_the_damaged_shard(sharded: Path) -> None:
    shard = sharded / "model-00002-of-00003.safetensors"
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF
    shard.write_bytes(bytes(data))
    report = statevault.verify(sharded)
    assert not report.ok
    assert [Path(bad.file).name for bad in report.bad] == ["model-00002-of-00003.safetensors"]


def test_convert_shards_to_one_file_and_back(sharded: Path, tmp_path: Path) -> None:
    one = tmp_path / "one.safetensors"
    statevault.convert(sharded, one)
    assert statevault.diff(sharded, one).ok
    back = tmp_path / "back"
    back.mkdir()
    report = statevault.convert(one, back / "model.safetensors", max_shard_size=15_000)
    assert report.destination == str(back / "model.safetensors.index.json")
    assert len(list(back.glob("model-*-of-00003.safetensors"))) == 3
    assert statevault.diff(sharded, back).ok
    with pytest.raises(statevault.DestinationExistsError):
        statevault.convert(one, back / "model.safetensors", max_shard_size=15_000)
