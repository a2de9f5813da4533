"""Modules with extra state (``get_extra_state``/``set_extra_state``) load as torch loads them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import statevault
from statevault.errors import StateDictMismatchError


class Counter(nn.Module):
    """Extra state that is not a tensor, with a tensor inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.count = 0
        self.scale = torch.ones(3)
        self.calls = 0

    def get_extra_state(self) -> dict[str, Any]:
        return {"count": self.count, "scale": self.scale}

    def set_extra_state(self, state: Any) -> None:
        self.calls += 1
        self.count, self.scale = state["count"], state["scale"]


class Holder(nn.Module):
    """Extra state that is a tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.table = torch.zeros(4)

    def get_extra_state(self) -> torch.Tensor:
        return self.table

    def set_extra_state(self, state: Any) -> None:
        self.table = state.clone()


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.counter = Counter()
        self.holder = Holder()


def trained() -> Net:
    net = Net()
    net.counter.count, net.counter.scale = 7, torch.arange(3.0)
    net.holder.table = torch.arange(4.0) * 2
    return net


def assert_loaded(net: Net, source: Net) -> None:
    assert net.counter.calls == 1 and net.counter.count == 7
    assert torch.equal(net.counter.scale, torch.arange(3.0))
    assert torch.equal(net.holder.table, torch.arange(4.0) * 2)
    assert torch.equal(net.counter.lin.weight, source.counter.lin.weight)


def test_extra_state_round_trips_through_a_file(tmp_path: Path) -> None:
    source = trained()
    path = tmp_path / "net.safetensors"
    statevault.save(source.state_dict(), path)
    net = Net()
    report = statevault.load_into(net, path)
    # the tensor inside the dict is not "unexpected"
    assert report.ok and not report.unexpected_keys
    assert "counter._extra_state" in report.matched
    assert_loaded(net, source)


def test_extra_state_from_an_open_checkpoint_and_from_memory(tmp_path: Path) -> None:
    source = trained()
    path = tmp_path / "net.safetensors"
    statevault.save(source.state_dict(), path)
    with statevault.Checkpoint(path) as checkpoint:
        net = Net()
        statevault.load_into(net, checkpoint)
        assert_loaded(net, source)
    net = Net()
    assert statevault.load_into(net, source.state_dict()).ok
    assert_loaded(net, source)


def test_missing_extra_state_is_reported_not_crashed(tmp_path: Path) -> None:
    path = tmp_path / "weights.safetensors"
    plain = {k: v for k, v in trained().state_dict().items() if not k.endswith("_extra_state")}
    statevault.save(plain, path)
    with pytest.raises(StateDictMismatchError, match=r"counter: 1 missing \(_extra_state\)"):
        statevault.load_into(Net(), path)
    report = statevault.load_into(Net(), path, strict=False)
    assert set(report.missing_keys) == {"counter._extra_state", "holder._extra_state"}


def test_in_memory_state_refuses_other_non_tensor_values() -> None:
    with pytest.raises(statevault.UnsupportedObjectError, match=r"'counter\.note'"):
        statevault.load_into(Net(), {"counter.note": "x"})
