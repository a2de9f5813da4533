"""A statevault index binds its shards: stale, swapped or missing shards are named on open;
Hugging Face's ``removed -> kept`` aliases in an index resolve on load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import safetensors.torch
import torch

import statevault


def state(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {f"layers.{i}.weight": torch.randn(50, 50, generator=generator) for i in range(4)}


def saved(directory: Path, seed: int) -> Path:
    directory.mkdir()
    statevault.save(state(seed), directory / "model.safetensors", max_shard_size=25_000)
    return directory


def test_a_shard_from_another_save_is_named(tmp_path: Path) -> None:
    first, second = saved(tmp_path / "a", 1), saved(tmp_path / "b", 2)
    shard = "model-00002-of-00002.safetensors"
    shutil.copy(second / shard, first / shard)  # same names, same tensors: only data differs
    with pytest.raises(statevault.HeaderError) as caught:
        statevault.load(first)
    message = str(caught.value)
    assert f"{shard} is not the shard this index was written with" in message
    assert "model-00001-of-00002.safetensors" not in message


def test_swapped_shards_are_named(tmp_path: Path) -> None:
    directory = saved(tmp_path / "a", 1)
    one, two = (
        directory / "model-00001-of-00002.safetensors",
        directory / "model-00002-of-00002.safetensors",
    )
    one.rename(tmp_path / "tmp")
    two.rename(one)
    (tmp_path / "tmp").rename(two)
    with pytest.raises(statevault.HeaderError, match="stale or swapped shard"):
        statevault.Checkpoint(directory / "model.safetensors.index.json")


def test_a_missing_shard_is_named(tmp_path: Path) -> None:
    directory = saved(tmp_path / "a", 1)
    (directory / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(
        statevault.CheckpointNotFoundError, match=r"model-00002-of-00002\.safetensors"
    ):
        statevault.load(directory)


def test_hf_aliases_in_index_metadata_resolve_on_load(tmp_path: Path) -> None:
    """The index huggingface_hub writes for tied weights: the removed name in metadata only."""
    weights = {"wte.weight": torch.randn(10, 4), "h.0.weight": torch.randn(4, 4)}
    safetensors.torch.save_file(
        {"wte.weight": weights["wte.weight"]}, tmp_path / "m-00001-of-00002.safetensors"
    )
    safetensors.torch.save_file(
        {"h.0.weight": weights["h.0.weight"]}, tmp_path / "m-00002-of-00002.safetensors"
    )
    index = {
        "metadata": {"total_size": 224, "lm_head.weight": "wte.weight"},
        "weight_map": {
            "wte.weight": "m-00001-of-00002.safetensors",
            "h.0.weight": "m-00002-of-00002.safetensors",
        },
    }
    (tmp_path / "m.safetensors.index.json").write_text(json.dumps(index))
    loaded = statevault.load(tmp_path / "m.safetensors.index.json")
    assert loaded["lm_head.weight"] is loaded["wte.weight"]
    model = torch.nn.ModuleDict(
        {"wte": torch.nn.Linear(4, 10, bias=False), "lm_head": torch.nn.Linear(4, 10, bias=False)}
    )
    model["h"] = torch.nn.ModuleList([torch.nn.Linear(4, 4, bias=False)])  # type: ignore[assignment]
    report = statevault.load_into(model, tmp_path)
    assert report.ok
    assert torch.equal(model["lm_head"].weight, weights["wte.weight"])


def test_damaged_binding_is_one_clear_error(tmp_path: Path) -> None:
    directory = saved(tmp_path / "a", 1)
    index_path = directory / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["metadata"]["statevault"] = "{not json"
    index_path.write_text(json.dumps(index))
    with pytest.raises(statevault.HeaderError, match="not statevault's shard binding"):
        statevault.load(directory)
