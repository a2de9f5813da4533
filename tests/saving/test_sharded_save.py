"""save(..., max_shard_size=...): HF's shard plan, names and index; round trips; what is removed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch

import statevault
from statevault.fileformat.shards import parse_size, plan_shards, shard_names, shard_pattern


# -- the pure plan (huggingface_hub's rules, on plain lists) ---------------------------------
def test_plan_is_greedy_in_key_order() -> None:
    assert plan_shards([4, 4, 4, 4, 4], [None] * 5, limit=10) == [[0, 1], [2, 3], [4]]


def test_plan_gives_a_tensor_over_the_limit_a_shard_of_its_own() -> None:
    # as huggingface_hub: the big one's shard is closed at once, the current one goes on
    assert plan_shards([3, 50, 3, 3], [None] * 4, limit=10) == [[1], [0, 2, 3]]


def test_plan_puts_tensors_sharing_storage_in_the_shard_of_the_first() -> None:
    assert plan_shards([6, 6, 6, 1], ["a", "b", "a", "b"], limit=10) == [[0, 2], [1, 3]]


@pytest.mark.parametrize(
    ("given", "expected"),
    [(123, 123), ("5GB", 5 * 10**9), ("500MB", 500 * 10**6), ("10kb", 10_000), ("1.5 GB", 1_500_000_000)],
)  # fmt: skip
def test_sizes_use_decimal_units(given: int | str, expected: int) -> None:
    assert parse_size(given) == expected


@pytest.mark.parametrize("bad", ["5GiB", "GB", "-1MB", 0, -5, True, 1.5, "5 G"])
def test_bad_sizes_are_refused_before_anything_is_written(tmp_path: Path, bad: object) -> None:
    with pytest.raises(statevault.InvalidArgumentError, match="max_shard_size"):
        statevault.save({"a": torch.ones(3)}, tmp_path / "m.safetensors", max_shard_size=bad)  # type: ignore[arg-type]
    assert os.listdir(tmp_path) == []


def test_names_are_huggingface_names() -> None:
    assert shard_names("model.safetensors", 2) == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ]
    pattern = shard_pattern("model.safetensors")
    assert pattern.match("model-00003-of-00010.safetensors")
    assert not pattern.match("model-00003-of-00010.safetensors.backup")
    assert not pattern.match("other-00001-of-00002.safetensors")
    assert not pattern.match("model-1-of-2.safetensors")


# -- saving ----------------------------------------------------------------------------------
def state(seed: int, n: int = 5) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {f"layers.{i}.weight": torch.randn(50, 50, generator=generator) for i in range(n)}


def names(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def test_sharded_save_writes_hf_layout_that_safetensors_reads(tmp_path: Path) -> None:
    sd = state(0)  # 10,000 bytes each
    statevault.save(sd, tmp_path / "model.safetensors", max_shard_size=25_000)
    assert names(tmp_path) == [
        "model-00001-of-00003.safetensors",
        "model-00002-of-00003.safetensors",
        "model-00003-of-00003.safetensors",
        "model.safetensors.index.json",
    ]
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == 50_000
    assert index["weight_map"] == {
        "layers.0.weight": "model-00001-of-00003.safetensors",
        "layers.1.weight": "model-00001-of-00003.safetensors",
        "layers.2.weight": "model-00002-of-00003.safetensors",
        "layers.3.weight": "model-00002-of-00003.safetensors",
        "layers.4.weight": "model-00003-of-00003.safetensors",
    }
    for name, shard in index["weight_map"].items():  # every shard is plain safetensors
        with safetensors.safe_open(tmp_path / shard, framework="pt") as handle:
            assert torch.equal(handle.get_tensor(name), sd[name])
    loaded = statevault.load(tmp_path)
    assert loaded.keys() == sd.keys()
    assert all(torch.equal(loaded[k], sd[k]) for k in sd)


def test_one_shard_is_the_one_file_save_writes_byte_for_byte(tmp_path: Path) -> None:
    sd = state(1)
    statevault.save(sd, tmp_path / "plain.safetensors")
    statevault.save(sd, tmp_path / "model.safetensors", max_shard_size="1GB")
    assert names(tmp_path) == ["model.safetensors", "plain.safetensors"]
    assert (tmp_path / "model.safetensors").read_bytes() == (
        tmp_path / "plain.safetensors"
    ).read_bytes()


def test_nested_training_state_shards_and_loads_whole(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(40, 40), torch.nn.Linear(40, 3))
    optim = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 40)).sum().backward()
    optim.step()
    saved = {
        "model": model.state_dict(),
        "optim": optim.state_dict(),
        "epoch": 3,
        "rng": torch.get_rng_state(),
    }
    statevault.save(saved, tmp_path / "ckpt.safetensors", max_shard_size=8_000)
    assert len(list(tmp_path.glob("ckpt-*-of-*.safetensors"))) > 2
    loaded = statevault.load(tmp_path / "ckpt.safetensors.index.json")
    assert loaded["epoch"] == 3
    assert torch.equal(loaded["rng"], saved["rng"])
    assert loaded["optim"]["param_groups"] == saved["optim"]["param_groups"]
    for key, tensor in saved["model"].items():
        assert torch.equal(loaded["model"][key], tensor)
    for pid, entry in saved["optim"]["state"].items():
        assert torch.equal(loaded["optim"]["state"][pid]["exp_avg"], entry["exp_avg"])


def test_tied_weights_are_stored_once_with_hf_alias_in_index(tmp_path: Path) -> None:
    sd = state(2)
    sd["lm_head.weight"] = sd["layers.0.weight"]
    statevault.save(sd, tmp_path / "model.safetensors", max_shard_size=25_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert "lm_head.weight" not in index["weight_map"]
    assert index["metadata"]["lm_head.weight"] == "layers.0.weight"
    loaded = statevault.load(tmp_path)
    assert loaded["lm_head.weight"] is loaded["layers.0.weight"]


def test_views_of_one_storage_land_in_one_shard(tmp_path: Path) -> None:
    base = torch.randn(4, 1000)
    sd = {"a": base[0], "b": torch.randn(1000), "c": base[1], "d": torch.randn(1000)}
    statevault.save(sd, tmp_path / "m.safetensors", max_shard_size=8_000)
    weight_map = json.loads((tmp_path / "m.safetensors.index.json").read_text())["weight_map"]
    assert weight_map["a"] == weight_map["c"]
    loaded = statevault.load(tmp_path / "m.safetensors.index.json")
    assert all(torch.equal(loaded[k], sd[k]) for k in sd)


def test_resave_with_fewer_shards_removes_only_this_base_s_shards(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors.backup").write_bytes(b"keep me")
    (tmp_path / "other-00001-of-00002.safetensors").write_bytes(b"not ours")
    (tmp_path / "model-00001-of-00003.safetensors.txt").write_bytes(b"not a shard name")
    statevault.save(state(3, n=6), tmp_path / "model.safetensors", max_shard_size=25_000)
    assert len(list(tmp_path.glob("model-*-of-00003.safetensors"))) == 3
    statevault.save(state(4, n=3), tmp_path / "model.safetensors", max_shard_size=25_000)
    assert names(tmp_path) == [
        "model-00001-of-00002.safetensors",
        "model-00001-of-00003.safetensors.txt",
        "model-00002-of-00002.safetensors",
        "model.safetensors.backup",
        "model.safetensors.index.json",
        "other-00001-of-00002.safetensors",
    ]
    loaded = statevault.load(tmp_path / "model.safetensors.index.json")
    assert all(torch.equal(loaded[k], v) for k, v in state(4, n=3).items())


def test_switching_between_one_file_and_shards_leaves_only_the_new_form(tmp_path: Path) -> None:
    target = tmp_path / "model.safetensors"
    statevault.save(state(5), target)
    statevault.save(state(6), target, max_shard_size=25_000)
    assert "model.safetensors" not in names(tmp_path)  # transformers would prefer it
    assert "model.safetensors.index.json" in names(tmp_path)
    statevault.save(state(7), target, max_shard_size="1MB")
    assert names(tmp_path) == ["model.safetensors"]
    loaded = statevault.load(target)
    assert all(torch.equal(loaded[k], v) for k, v in state(7).items())


def test_user_metadata_reaches_index_and_every_shard(tmp_path: Path) -> None:
    statevault.save(
        state(8), tmp_path / "m.safetensors", max_shard_size=25_000, metadata={"run": "a"}
    )
    with statevault.Checkpoint(tmp_path) as ckpt:
        assert ckpt.metadata["run"] == "a"
        assert "statevault" not in ckpt.metadata
    for shard in tmp_path.glob("m-*.safetensors"):
        with safetensors.safe_open(shard, framework="pt") as handle:
            assert handle.metadata()["run"] == "a"
