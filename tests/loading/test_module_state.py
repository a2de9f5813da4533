"""load_into lists a model's tensors by walking its modules: exactly what state_dict() lists."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn.utils import spectral_norm
from torch.nn.utils.parametrizations import orthogonal

import statevault
from statevault.engine.ties import any_repeated, start_addresses
from statevault.loading.module_state import Walk, model_state, walkable
from statevault.readers.safetensors_file import DIRECT_DEVICES


class Holder(nn.Module):
    """Buffers of every kind, an unset parameter, an unset child and a module used twice."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("running", torch.zeros(3))
        self.register_buffer("scratch", torch.ones(2), persistent=False)
        self.register_buffer("unset_buffer", None)
        self.register_parameter("unset_param", None)
        self.scale = nn.Parameter(torch.ones(1))
        self.norm = nn.BatchNorm1d(4)
        self.register_module("unset_child", None)
        shared = nn.Linear(2, 2)
        self.first = nn.Sequential(shared, nn.ReLU(), nn.Linear(2, 3))
        self.again = shared  # state_dict lists it under both names
        self.table = nn.ModuleDict({"a": nn.Embedding(5, 2), "b": nn.LayerNorm(2)})


def _plain_models() -> dict[str, Callable[[], nn.Module]]:
    return {
        "holder": Holder,
        "flat": lambda: nn.ModuleList(nn.Linear(3, 3) for _ in range(20)),
        "deep": lambda: nn.Sequential(
            nn.Sequential(nn.Sequential(nn.Linear(1, 1)), nn.Linear(1, 2))
        ),
        "leaf": lambda: nn.Linear(2, 2),
        "empty": nn.Module,
        "parametrized": lambda: nn.Sequential(orthogonal(nn.Linear(3, 3))),
        "lstm": lambda: nn.LSTM(4, 4, 2),
        "encoder layer": lambda: nn.TransformerEncoderLayer(8, 2, 8),
    }


@pytest.mark.parametrize("make", _plain_models().values(), ids=list(_plain_models()))
def test_the_walk_lists_what_state_dict_lists(make: Callable[[], nn.Module]) -> None:
    model = make()
    assert walkable(model)
    expected = list(model.state_dict(keep_vars=True).items())
    walked = list(Walk(model).items())
    assert [k for k, _ in walked] == [k for k, _ in expected]
    assert all(a is b for (_, a), (_, b) in zip(walked, expected, strict=True))
    assert list(Walk(model).items()) == walked  # each listing starts afresh
    keys = Walk(model).keys()
    assert list(keys) == [k for k, _ in expected] and len(keys) == len(expected)
    assert all(k in keys for k, _ in expected) and "nothing" not in keys


class SavesItsWay(nn.Linear):
    def _save_to_state_dict(self, destination: Any, prefix: str, keep_vars: bool) -> None:
        destination[prefix + "packed"] = self.weight


class ListsItsWay(nn.Linear):
    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        return super().state_dict(*args, **kwargs)


class WithExtraState(nn.Linear):
    def get_extra_state(self) -> torch.Tensor:
        return torch.zeros(1)

    def set_extra_state(self, state: Any) -> None:
        pass


def _drop_bias(module: nn.Module, state: dict[str, Any], prefix: str, local: Any) -> None:
    del state[prefix + "bias"]


def _instance_override() -> nn.Module:
    layer = nn.Linear(2, 2)
    layer.state_dict = lambda *a, **k: {}  # type: ignore[method-assign,assignment]
    return nn.Sequential(layer)


def _dotted_child() -> nn.Module:
    model = nn.Module()
    setattr(model, "a.b", nn.Linear(1, 1))  # a name no attribute syntax allows
    return model


def _hooked(register: str, hook: Any) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        inner = nn.Linear(2, 2)
        getattr(inner, register)(hook)
        return nn.Sequential(inner, nn.Linear(2, 1))

    return make


def _changed_models() -> dict[str, Callable[[], nn.Module]]:
    return {
        "post hook": _hooked("register_state_dict_post_hook", _drop_bias),
        "pre hook": _hooked("register_state_dict_pre_hook", lambda *args: None),
        "_save_to_state_dict": lambda: nn.Sequential(SavesItsWay(2, 2)),
        "state_dict": lambda: nn.Sequential(ListsItsWay(2, 2)),
        "extra state": lambda: nn.Sequential(WithExtraState(2, 2)),
        "instance method": _instance_override,
        "dotted name": _dotted_child,
        "spectral_norm": lambda: nn.Sequential(spectral_norm(nn.Linear(3, 3))),
    }


@pytest.mark.parametrize("make", _changed_models().values(), ids=list(_changed_models()))
def test_state_dict_itself_is_asked_when_a_module_changes_it(
    make: Callable[[], nn.Module],
) -> None:
    model = make()
    assert not walkable(model)
    state = model_state(model)
    assert isinstance(state, dict)
    assert list(state.items()) == list(model.state_dict(keep_vars=True).items())


def test_a_state_dict_hook_decides_what_load_into_expects(tmp_path: Path) -> None:
    model = _hooked("register_state_dict_post_hook", _drop_bias)()
    assert "0.bias" not in model.state_dict()
    path = tmp_path / "hooked.safetensors"
    statevault.save(model.state_dict(), path)
    report = statevault.load_into(_hooked("register_state_dict_post_hook", _drop_bias)(), path)
    assert report.ok and "0.bias" not in report.matched  # walking would call it missing


def test_extra_state_is_matched_as_state_dict_lists_it(tmp_path: Path) -> None:
    model = nn.Sequential(WithExtraState(2, 2))
    path = tmp_path / "extra.safetensors"
    statevault.save(model.state_dict(), path)
    report = statevault.check(nn.Sequential(WithExtraState(2, 2)), path)
    assert report.ok and "0._extra_state" in report.matched


def saved_and_fresh(make: Callable[[], nn.Module], path: Path) -> tuple[nn.Module, nn.Module]:
    """A model saved to ``path`` and a fresh one built with other random weights."""
    torch.manual_seed(1)
    reference = make()
    statevault.save(reference.state_dict(), path)
    torch.manual_seed(2)
    return reference, make()


def test_non_persistent_buffers_and_shared_modules_load(tmp_path: Path) -> None:
    path = tmp_path / "holder.safetensors"
    reference, model = saved_and_fresh(Holder, path)
    model.scratch.fill_(5.0)
    report = statevault.load_into(model, path)
    assert report.ok and report.matched == tuple(reference.state_dict())
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert torch.equal(model.scratch, torch.full((2,), 5.0))  # not in any state_dict


def _addresses(tensors: list[torch.Tensor]) -> bool:
    table = start_addresses()
    table.extend(t.data_ptr() for t in tensors if t.numel())
    return any_repeated(table)


def test_repeated_start_addresses_are_found() -> None:
    base = torch.arange(12.0)
    assert not _addresses([])
    assert not _addresses([base])
    assert not _addresses([torch.ones(3) for _ in range(50)] + [base, base[1:]])
    assert _addresses([torch.ones(3) for _ in range(50)] + [base, base[:4]])
    assert not _addresses([base, torch.empty(0), torch.empty(0)])


class SharedTable(nn.Module):
    """One buffer object registered in two modules: tied until ``.to(dtype)`` copies each."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Module()
        self.b = nn.Module()
        table = torch.randn(4)
        self.a.register_buffer("table", table)
        self.b.register_buffer("table", table)


def test_ties_that_dtype_undoes_are_filled_one_by_one(tmp_path: Path) -> None:
    path = tmp_path / "shared.safetensors"
    reference, model = saved_and_fresh(SharedTable, path)
    report = statevault.load_into(model, path, dtype=torch.bfloat16)
    assert [(t.key, t.how) for t in report.tied] == [("b.table", "shared")]
    assert model.a.table is not model.b.table  # .to() gave each module its own copy
    expected = reference.a.table.to(torch.bfloat16)
    assert torch.equal(model.a.table, expected) and torch.equal(model.b.table, expected)


def test_the_fill_spells_out_the_direct_devices() -> None:
    # SafetensorsInput.fill tests dest.is_cpu or dest.is_cuda for speed; a device added to
    # DIRECT_DEVICES would still load (through a copy) but should be added there too
    assert DIRECT_DEVICES == ("cpu", "cuda")


@pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")  # still used in the wild
@pytest.mark.parametrize("kind", ["script", "trace", "scripted child"])
def test_torchscript_modules_load(kind: str, tmp_path: Path) -> None:
    def make() -> nn.Module:
        plain = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
        if kind == "script":
            return torch.jit.script(plain)
        if kind == "trace":
            return torch.jit.trace(plain.eval(), torch.ones(3, 2))
        return nn.Sequential(torch.jit.script(plain), nn.Linear(2, 1))

    path = tmp_path / "scripted.safetensors"
    reference, model = saved_and_fresh(make, path)
    assert statevault.load_into(model, path).ok
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
