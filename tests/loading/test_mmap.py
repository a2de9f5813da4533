"""load_into / build_model with mmap=True: the module's tensors become views of the file's
private mapping (parameters stay parameters, ties stay ties, the module keeps its dtypes),
with the same values, reports and refusals as a normal load."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from tests.helpers.fixes import printed_fix, run_fix
from tests.helpers.samples import TiedModel
from torch import nn

import statevault
from statevault.errors import CheckpointKindError, InvalidArgumentError, StateDictMismatchError


class Net(nn.Module):
    def __init__(self, extra: bool = False) -> None:
        super().__init__()
        self.fc = nn.Linear(32, 16)
        self.norm = nn.BatchNorm1d(16)
        self.out = nn.Linear(16, 4)
        if extra:
            self.extra = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(self.fc(x)))


def _saved(tmp_path: Path, model: nn.Module | None = None) -> tuple[Path, dict[str, Any]]:
    torch.manual_seed(0)
    model = model or Net()
    with torch.no_grad():
        model.norm.running_mean.normal_()  # type: ignore[union-attr, operator]
    path = tmp_path / "net.safetensors"
    statevault.save(model, path)
    return path, {k: v.clone() for k, v in model.state_dict().items()}


def _is_mapped(tensor: torch.Tensor, path: Path) -> bool:
    """A view of the file's mapping: its storage is the whole file, not the tensor's bytes."""
    return tensor.untyped_storage().nbytes() == os.path.getsize(path) != tensor.nbytes


def _same(model: nn.Module, expected: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert list(state) == list(expected)
    for key, value in expected.items():
        assert torch.equal(state[key].to(value.dtype), value), key


def test_load_into_binds_every_tensor_to_the_mapping(tmp_path: Path) -> None:
    path, expected = _saved(tmp_path)
    model = Net()
    model.out.bias.requires_grad_(False)
    report = statevault.load_into(model, path, mmap=True)
    _same(model, expected)
    assert all(_is_mapped(t, path) for t in model.state_dict().values())
    assert isinstance(model.fc.weight, nn.Parameter) and model.fc.weight.requires_grad
    assert not model.out.bias.requires_grad  # kept, as assign=True keeps it
    assert report.ok and "mmap=True: 9 tensor(s) are views of the file's mapping" in report.notes
    x = torch.randn(5, 32)
    model.eval()
    reference = Net().eval()
    reference.load_state_dict(expected)
    torch.testing.assert_close(model(x), reference(x))


def test_writes_to_a_mapped_model_stay_in_it(tmp_path: Path) -> None:
    path, expected = _saved(tmp_path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    first, second = Net(), Net()
    statevault.load_into(first, path, mmap=True)
    statevault.load_into(second, path, mmap=True)
    with torch.no_grad():
        first.fc.weight.zero_()
    assert torch.equal(second.fc.weight, expected["fc.weight"])
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


def test_tied_tensors_stay_one_parameter(tmp_path: Path) -> None:
    torch.manual_seed(1)
    path = tmp_path / "tied.safetensors"
    statevault.save(TiedModel(), path)
    model = TiedModel()
    statevault.load_into(model, path, mmap=True)
    assert model.head.weight is model.embed.weight
    assert _is_mapped(model.embed.weight, path)
    assert [n for n, _ in model.named_parameters()].count("head.weight") == 0  # one parameter


def test_other_dtypes_are_cast_copies_and_the_module_keeps_its_own(tmp_path: Path) -> None:
    path, expected = _saved(tmp_path)
    model = Net().double()
    report = statevault.load_into(model, path, mmap=True)
    assert model.fc.weight.dtype == torch.float64 and not _is_mapped(model.fc.weight, path)
    assert _is_mapped(model.norm.num_batches_tracked, path)  # int64 in both: a view
    _same(model, expected)
    note = next(n for n in report.notes if n.startswith("mmap=True"))
    assert "; 8 copied to cast them to the model's dtype (fc.weight, fc.bias, norm.weight" in note
    halved = Net()
    statevault.load_into(halved, path, mmap=True, dtype="bf16")
    assert halved.fc.weight.dtype == torch.bfloat16
    assert torch.equal(halved.fc.weight, expected["fc.weight"].to(torch.bfloat16))


def test_build_model_maps_the_weights_and_initialises_what_the_file_lacks(tmp_path: Path) -> None:
    path, expected = _saved(tmp_path)
    model = statevault.build_model(Net, path, mmap=True)
    _same(model, expected)
    assert all(_is_mapped(t, path) for t in model.state_dict().values())
    assert not any(p.is_meta for p in model.parameters())
    grown = statevault.build_model(Net, path, kwargs={"extra": True}, strict=False, mmap=True)
    assert not grown.extra.weight.is_meta and torch.isfinite(grown.extra.weight).all()
    assert not _is_mapped(grown.extra.weight, path) and _is_mapped(grown.fc.weight, path)
    assert grown.extra.weight.abs().sum() > 0  # reset_parameters ran, not zeros or garbage


def test_a_module_that_loads_its_own_way_gets_mapped_tensors_through_torch(
    tmp_path: Path,
) -> None:
    path, expected = _saved(tmp_path)
    model = Net()
    seen: list[str] = []
    model.register_load_state_dict_post_hook(lambda module, keys: seen.append("post"))
    report = statevault.load_into(model, path, mmap=True)
    assert seen == ["post"] and "custom load hooks found" in report.notes[-1]
    _same(model, expected)
    assert _is_mapped(model.fc.weight, path) and isinstance(model.fc.weight, nn.Parameter)


def test_a_strict_refusal_prints_a_fix_that_keeps_mmap(tmp_path: Path) -> None:
    _, expected = _saved(tmp_path)
    renamed = {("fc.kernel" if k == "fc.weight" else k): v for k, v in expected.items()}
    path = tmp_path / "renamed.safetensors"
    statevault.save(renamed, path)
    model = Net()
    with pytest.raises(StateDictMismatchError) as info:
        statevault.load_into(model, path, mmap=True)
    fix = printed_fix(str(info.value))
    assert "mmap=True" in fix and "rename=" in fix
    report = run_fix(fix, {"statevault": statevault, "model": model})
    assert report.ok
    _same(model, expected)
    assert _is_mapped(model.fc.weight, path)


def test_a_state_dict_cannot_be_mapped_and_assign_is_the_fix(tmp_path: Path) -> None:
    state = Net().state_dict()
    with pytest.raises(CheckpointKindError, match=r"assign=True makes the module use"):
        statevault.load_into(Net(), state, mmap=True)
    model = Net()
    statevault.load_into(model, state, assign=True)  # the fix
    assert model.fc.weight.data_ptr() == state["fc.weight"].data_ptr()


def test_build_model_with_mmap_refuses_other_devices(tmp_path: Path) -> None:
    path, expected = _saved(tmp_path)
    with pytest.raises(InvalidArgumentError, match=r"mmap=True maps the file into CPU memory"):
        statevault.build_model(Net, path, mmap=True, device="meta")
    _same(statevault.build_model(Net, path, mmap=True, device="cpu"), expected)
