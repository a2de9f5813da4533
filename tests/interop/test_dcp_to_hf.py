"""A distributed checkpoint (statevault.dcp's, and DCP's own FileSystemWriter format) of a
training state becomes Hugging Face shards that transformers' ``from_pretrained`` and the
safetensors library load with equal weights: ``convert`` (API and CLI) with
``max_shard_size`` into a folder, the model's keys selected and their prefix stripped.
Tiny models from configs, nothing downloaded."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp
from click.testing import CliRunner
from safetensors.torch import load_file
from tests.interop.test_hf_round_trips import MODELS, assert_same_weights, built

import statevault
from statevault.cli import main
from statevault.dcp import Writer

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _ours(state: dict[str, Any], path: Path) -> None:
    dcp.save(state, storage_writer=Writer(path))


def _theirs(state: dict[str, Any], path: Path) -> None:
    dcp.save(state, checkpoint_id=path)


WRITERS = [pytest.param(_ours, id="statevault.dcp"), pytest.param(_theirs, id="FileSystemWriter")]


def _training_state(model: torch.nn.Module) -> dict[str, Any]:
    optim = torch.optim.AdamW(model.parameters())
    return {"model": model.state_dict(), "optim": optim.state_dict(), "step": 10}


def _assert_loads_in_hf(source: Any, folder: Path) -> None:
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    by_safetensors: dict[str, torch.Tensor] = {}
    for shard in shards:
        by_safetensors.update(load_file(folder / shard))
    assert sorted(by_safetensors) == sorted(index["weight_map"])
    expected = source.state_dict()
    for key, tensor in by_safetensors.items():
        assert torch.equal(tensor, expected[key]), key
    model, info = type(source).from_pretrained(folder, output_loading_info=True)
    assert not any(info.values()), info
    assert_same_weights(model, source)


@pytest.mark.parametrize("make", MODELS)
@pytest.mark.parametrize("write", WRITERS)
def test_a_distributed_checkpoint_converts_to_shards_from_pretrained_loads(
    tmp_path: Path, make: Any, write: Callable[[dict[str, Any], Path], None]
) -> None:
    source = built(make, seed=4)
    write(_training_state(source), tmp_path / "ckpt")
    folder = tmp_path / "hf"
    report = statevault.convert(
        tmp_path / "ckpt",
        f"{folder}/",
        keys=r"^model\.",
        strip_prefix="model.",
        max_shard_size="20KB",
    )
    assert report.destination == str(folder / "model.safetensors.index.json")
    source.config.save_pretrained(folder)
    _assert_loads_in_hf(source, folder)


def test_the_cli_writes_shards_into_an_existing_directory(tmp_path: Path) -> None:
    make = MODELS[0].values[0]
    source = built(make, seed=5)
    _theirs(_training_state(source), tmp_path / "ckpt")
    folder = tmp_path / "hf"
    folder.mkdir()
    source.config.save_pretrained(folder)
    arguments = ["convert", str(tmp_path / "ckpt"), str(folder), "--keys", r"^model\."]
    arguments += ["--strip-prefix", "model.", "--max-shard-size", "20KB"]
    result = CliRunner().invoke(main, arguments)
    assert result.exit_code == 0, result.output
    assert "(distcp)" in result.output and "model.safetensors.index.json" in result.output
    _assert_loads_in_hf(source, folder)


def test_a_directory_destination_without_a_shard_size_is_refused_then_fixed(
    tmp_path: Path,
) -> None:
    state = {"w": torch.arange(4.0)}
    statevault.save(state, tmp_path / "one.safetensors")
    (tmp_path / "out").mkdir()
    with pytest.raises(statevault.InvalidArgumentError, match="give max_shard_size") as caught:
        statevault.convert(tmp_path / "one.safetensors", tmp_path / "out")
    assert str(tmp_path / "out" / "model.safetensors") in str(caught.value)
    # both suggested fixes work: a shard size, or the file named
    statevault.convert(tmp_path / "one.safetensors", tmp_path / "out", max_shard_size="1KB")
    assert torch.equal(statevault.load(tmp_path / "out")["w"], state["w"])
    statevault.convert(tmp_path / "one.safetensors", tmp_path / "out2.safetensors")
    assert torch.equal(statevault.load(tmp_path / "out2.safetensors")["w"], state["w"])


def test_a_missing_parent_is_named_and_nothing_is_created(tmp_path: Path) -> None:
    statevault.save({"w": torch.arange(4.0)}, tmp_path / "one.safetensors")
    target = tmp_path / "missing" / "hf"
    with pytest.raises(statevault.CheckpointNotFoundError, match="create it first"):
        statevault.convert(tmp_path / "one.safetensors", f"{target}/", max_shard_size="1KB")
    assert not (tmp_path / "missing").exists()
    (tmp_path / "missing").mkdir()
    statevault.convert(tmp_path / "one.safetensors", f"{target}/", max_shard_size="1KB")
    assert (target / "model.safetensors").exists()
