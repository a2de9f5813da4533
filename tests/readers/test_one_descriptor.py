"""Everything a load needs comes from the descriptors opened by ``Checkpoint(...)``.

A save replaces a checkpoint by renaming a new file onto its path. These tests do that in
the middle of a load and check that every value (tensors, extra state, module versions,
the nested-state tree) still comes from the file that was opened, never from the new one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

import statevault


class WithExtraState(nn.Module):
    """A linear layer, a BatchNorm (module versions) and a dict of extra state."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 2)
        self.bn = nn.BatchNorm1d(2)
        self.extra: dict[str, Any] = {"step": 0}

    def get_extra_state(self) -> dict[str, Any]:
        return dict(self.extra)

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.extra = dict(state)


def _saved(path: Path, value: float, step: int) -> Path:
    module = WithExtraState()
    with torch.no_grad():
        module.fc.weight.fill_(value)
    module.extra = {"step": step}
    statevault.save(module.state_dict(), path)
    return path


def _replace(path: Path, with_file: Path) -> None:
    os.replace(with_file, path)  # what save does: an atomic rename onto the path


def test_a_replaced_file_does_not_reach_an_open_checkpoint(tmp_path: Path) -> None:
    path = _saved(tmp_path / "ckpt.safetensors", 1.0, step=1)
    newer = _saved(tmp_path / "newer.safetensors", 2.0, step=2)
    with statevault.Checkpoint(path) as ckpt:
        weight = ckpt.read(["fc.weight"])["fc.weight"]
        _replace(path, newer)  # between the tensor read and the extra-state read
        saved, extra = ckpt.stored_object("_extra_state")
        versions = ckpt.torch_versions()
        state = ckpt.load()
    assert torch.equal(weight, torch.ones(2, 2))
    assert saved and extra == {"step": 1}
    assert versions is not None and "bn" in versions
    assert state["_extra_state"] == {"step": 1} and torch.equal(state["fc.weight"], weight)
    assert statevault.load(path)["_extra_state"] == {"step": 2}  # the path did change


def test_load_into_sees_one_file_when_the_path_is_replaced_mid_load(tmp_path: Path) -> None:
    path = _saved(tmp_path / "ckpt.safetensors", 1.0, step=1)
    newer = _saved(tmp_path / "newer.safetensors", 2.0, step=2)
    model = WithExtraState()
    replaced: list[bool] = []

    def replace_once(*_: object) -> None:
        # state_dict() runs while load_into plans, after opening and before any read
        if not replaced:
            _replace(path, newer)
            replaced.append(True)

    model.register_state_dict_pre_hook(replace_once)
    report = statevault.load_into(model, path)
    assert replaced == [True]  # the file really was replaced during the load
    assert report.ok
    assert torch.equal(model.fc.weight.detach(), torch.ones(2, 2))
    assert model.extra == {"step": 1}


def test_a_replaced_shard_does_not_reach_an_open_sharded_checkpoint(tmp_path: Path) -> None:
    folder = tmp_path / "sharded"
    folder.mkdir()
    shards = {"a.safetensors": {"a": torch.ones(3)}, "b.safetensors": {"b": torch.ones(2)}}
    for name, tensors in shards.items():
        safetensors.torch.save_file(tensors, folder / name)
    index = folder / "model.safetensors.index.json"
    index.write_text('{"weight_map": {"a": "a.safetensors", "b": "b.safetensors"}}')
    safetensors.torch.save_file({"b": torch.full((2,), 7.0)}, tmp_path / "new.safetensors")
    with statevault.Checkpoint(folder) as ckpt:
        assert ckpt.kind == statevault.CheckpointKind.SHARDED
        first = ckpt.read(["a"])["a"]
        _replace(folder / "b.safetensors", tmp_path / "new.safetensors")
        second = ckpt.read(["b"])["b"]
    assert torch.equal(first, torch.ones(3)) and torch.equal(second, torch.ones(2))
    assert torch.equal(statevault.load(folder)["b"], torch.full((2,), 7.0))
