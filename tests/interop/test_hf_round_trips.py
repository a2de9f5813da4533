"""Hugging Face round trips with a real transformers: tiny models from configs, nothing
downloaded (HF_HUB_OFFLINE=1).

statevault -> ``from_pretrained``: a checkpoint statevault saves (one file or shards, beside
the model's ``config.json``) loads with no missing, unexpected or mismatched keys and equal
weights. ``save_pretrained`` -> statevault: a folder transformers writes (one file or shards)
and the ``.bin`` layouts transformers 4 wrote (built here with huggingface_hub's splitter:
transformers 5 writes safetensors only) load with ``load_into``/``build_model`` and convert
losslessly. GPT-2's tied ``lm_head`` stays tied both ways.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from huggingface_hub import split_torch_state_dict_into_shards
from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

import statevault


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def gpt2() -> tuple[type[Any], Any]:
    return GPT2LMHeadModel, GPT2Config(
        vocab_size=50, n_embd=32, n_layer=2, n_head=2, n_positions=16
    )


def bert() -> tuple[type[Any], Any]:
    config = BertConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=16,
    )
    return BertModel, config


MODELS = [pytest.param(gpt2, id="gpt2"), pytest.param(bert, id="bert")]
SHARDING = [pytest.param(None, id="one-file"), pytest.param("20KB", id="sharded")]


def built(make: Any, seed: int) -> Any:
    cls, config = make()
    torch.manual_seed(seed)
    return cls(config).eval()


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    ours, theirs = a.state_dict(), b.state_dict()
    assert sorted(ours) == sorted(theirs)
    for key, value in ours.items():
        assert torch.equal(value, theirs[key]), key


@pytest.mark.parametrize("make", MODELS)
@pytest.mark.parametrize("max_shard_size", SHARDING)
def test_a_statevault_save_loads_with_from_pretrained(
    tmp_path: Path, make: Any, max_shard_size: str | None
) -> None:
    source = built(make, seed=1)
    source.config.save_pretrained(tmp_path)
    statevault.save(source, tmp_path / "model.safetensors", max_shard_size=max_shard_size)
    sharded = (tmp_path / "model.safetensors.index.json").exists()
    assert sharded == (max_shard_size is not None)

    model, info = type(source).from_pretrained(tmp_path, output_loading_info=True)
    assert {key: list(value) for key, value in info.items()} == {
        "missing_keys": [],
        "unexpected_keys": [],
        "mismatched_keys": [],
        "error_msgs": [],
    }
    assert_same_weights(model, source)
    if isinstance(source, GPT2LMHeadModel):
        assert model.lm_head.weight is model.transformer.wte.weight


def _save_bin(model: torch.nn.Module, folder: Path, max_shard_size: str | None) -> None:
    """The ``.bin`` layout transformers 4 wrote with ``safe_serialization=False``."""
    folder.mkdir()
    model.config.save_pretrained(folder)
    state = model.state_dict()
    if max_shard_size is None:
        torch.save(state, folder / "pytorch_model.bin")
        return
    split = split_torch_state_dict_into_shards(
        state, filename_pattern="pytorch_model{suffix}.bin", max_shard_size=max_shard_size
    )
    assert split.is_sharded
    for shard, names in split.filename_to_tensors.items():
        torch.save({name: state[name] for name in names}, folder / shard)
    index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))


def _save_pretrained(source: Any, folder: Path, kind: str, max_shard_size: str | None) -> None:
    if kind == "safetensors":
        source.save_pretrained(
            folder, **({"max_shard_size": max_shard_size} if max_shard_size else {})
        )
    else:
        _save_bin(source, folder, max_shard_size)


@pytest.mark.parametrize("make", MODELS)
@pytest.mark.parametrize("max_shard_size", SHARDING)
@pytest.mark.parametrize("kind", ["safetensors", "bin"])
def test_a_transformers_folder_loads_builds_and_converts_losslessly(
    tmp_path: Path, make: Any, max_shard_size: str | None, kind: str
) -> None:
    source = built(make, seed=2)
    folder = tmp_path / "pretrained"
    _save_pretrained(source, folder, kind, max_shard_size)
    index = (
        "model.safetensors.index.json" if kind == "safetensors" else "pytorch_model.bin.index.json"
    )
    assert (folder / index).exists() == (max_shard_size is not None)
    # the folder is a real transformers checkpoint: transformers itself loads it
    reference, info = type(source).from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]

    fresh = built(make, seed=3)
    report = statevault.load_into(fresh, folder)
    assert report.ok, str(report)
    assert_same_weights(fresh, source)

    cls, config = make()
    model = statevault.build_model(cls, folder, args=(config,))
    assert_same_weights(model, source)
    if isinstance(source, GPT2LMHeadModel):
        assert model.lm_head.weight is model.transformer.wte.weight

    converted = tmp_path / "converted.safetensors"
    statevault.convert(folder, converted)
    again = statevault.load(converted)
    stored = reference.state_dict()
    for key, value in again.items():
        assert torch.equal(value, stored[key]), key
    assert set(stored) - set(again) <= {"lm_head.weight"}  # a tie HF stores once
    assert statevault.load_into(built(make, seed=4), converted).ok
