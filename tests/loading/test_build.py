"""build_model / skip_init / materialize: build without init, fill from the file, nothing left on meta."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import statevault
from statevault.errors import StateDictMismatchError, StateVaultError


class Rotary(nn.Module):
    """A tiny LLM-ish model: tied embedding/head, norm, and a computed non-persistent table."""

    def __init__(self, vocab: int = 11, dim: int = 8, max_len: int = 5) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)
        self.norm = nn.BatchNorm1d(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight
        inv = 1.0 / (10000 ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        table = torch.outer(torch.arange(max_len, dtype=torch.float32), inv)
        self.register_buffer("rotary", table.cos(), persistent=False)


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Rotary, Path]:
    torch.manual_seed(0)
    model = Rotary()
    with torch.no_grad():
        model.norm.running_mean.uniform_()  # a persistent buffer with non-default values
    path = tmp_path / "rotary.safetensors"
    statevault.save(model, path)
    return model, path


def test_build_model_restores_every_tensor_and_computed_buffers(saved: tuple[Rotary, Path]) -> None:
    original, path = saved
    model = statevault.build_model(Rotary, path)
    assert isinstance(model, Rotary)
    for name, tensor in original.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    assert torch.equal(model.rotary, original.rotary)  # computed in __init__, not in the file
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])


def test_build_model_forwards_constructor_arguments(tmp_path: Path) -> None:
    path = tmp_path / "small.safetensors"
    statevault.save(Rotary(vocab=7, dim=4), path)
    model = statevault.build_model(Rotary, path, args=(7,), kwargs={"dim": 4})
    assert model.embed.weight.shape == (7, 4)


def test_tied_weights_stay_one_parameter(saved: tuple[Rotary, Path]) -> None:
    model = statevault.build_model(Rotary, saved[1])
    assert model.head.weight is model.embed.weight
    assert len(list(model.parameters())) == len(list(saved[0].parameters()))


def test_skip_init_puts_only_parameters_on_meta_and_then_stops() -> None:
    with statevault.skip_init():
        inside = nn.BatchNorm1d(3)
    assert inside.weight.is_meta and inside.bias.is_meta
    assert not inside.running_mean.is_meta  # buffers are built for real
    with pytest.raises(RuntimeError), statevault.skip_init():
        raise RuntimeError("boom")
    assert not nn.Linear(2, 2).weight.is_meta  # the hook is gone, even after an error


def test_weights_are_not_initialised(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "lin.safetensors"
    statevault.save(nn.Linear(3, 3), path)
    touched: list[torch.device] = []
    real = nn.init.kaiming_uniform_

    def spy(tensor: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        touched.append(tensor.device)
        return real(tensor, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(nn.init, "kaiming_uniform_", spy)
    statevault.build_model(nn.Linear, path, args=(3, 3))
    assert touched and all(d.type == "meta" for d in touched)  # init ran on nothing


def test_requires_grad_and_dtype_casts_are_kept(tmp_path: Path) -> None:
    source = nn.Linear(4, 2).to(torch.bfloat16)
    path = tmp_path / "bf16.safetensors"
    statevault.save(source, path)

    def frozen() -> nn.Linear:
        layer = nn.Linear(4, 2)
        layer.bias.requires_grad_(False)
        return layer

    model = statevault.build_model(frozen, path)
    assert model.weight.dtype == torch.float32 and not model.bias.requires_grad
    assert torch.equal(model.weight, source.weight.float())


def test_missing_parameter_raises_when_strict(saved: tuple[Rotary, Path], tmp_path: Path) -> None:
    state = {k: v for k, v in saved[0].state_dict().items() if k != "mix.bias"}
    path = tmp_path / "partial.safetensors"
    statevault.save(state, path)
    with pytest.raises(StateDictMismatchError, match=r"mix: 1 missing \(bias\)") as caught:
        statevault.build_model(Rotary, path)
    assert caught.value.report.missing_keys == ["mix.bias"]


def test_missing_parameter_is_initialised_and_reported_when_not_strict(
    saved: tuple[Rotary, Path], tmp_path: Path
) -> None:
    state = {k: v for k, v in saved[0].state_dict().items() if k != "mix.bias"}
    path = tmp_path / "partial.safetensors"
    statevault.save(state, path)
    with statevault.skip_init():
        model = Rotary()
    report = statevault.materialize(model, path, strict=False)
    assert report.missing_keys == ["mix.bias"]
    assert any("reset_parameters" in note and "mix.bias" in note for note in report.notes)
    assert not model.mix.bias.is_meta
    bound = 1 / math.sqrt(8)  # nn.Linear's own init range for its bias
    assert model.mix.bias.abs().max() <= bound and model.mix.bias.abs().sum() > 0
    assert torch.equal(model.mix.weight, saved[0].mix.weight)  # loaded after the reset


class NoReset(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3))
        self.other = nn.Parameter(torch.ones(2))


def test_missing_parameter_without_reset_parameters_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "noreset.safetensors"
    statevault.save({"other": torch.zeros(2)}, path)
    with statevault.skip_init():
        model = NoReset()
    with pytest.raises(StateVaultError, match=r"neither reset_parameters\(\).*: scale"):
        statevault.materialize(model, path, strict=False)


class DerivedBuffer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(3))
        self.register_buffer("doubled", self.weight.detach() * 2, persistent=False)


def test_buffer_derived_from_a_parameter_is_never_left_on_meta(tmp_path: Path) -> None:
    path = tmp_path / "derived.safetensors"
    statevault.save(DerivedBuffer(), path)
    with pytest.raises(StateVaultError, match="meta device after loading: doubled"):
        statevault.build_model(DerivedBuffer, path)


class Hooked(nn.Module):
    """Renames a legacy key on load, so loading must go through load_state_dict."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 2)
        self._register_load_state_dict_pre_hook(self._rename)

    @staticmethod
    def _rename(state: dict[str, torch.Tensor], prefix: str, *args: object) -> None:
        if prefix + "old_fc.weight" in state:
            state[prefix + "fc.weight"] = state.pop(prefix + "old_fc.weight")


def test_modules_with_load_hooks_are_materialised_through_them(tmp_path: Path) -> None:
    source = nn.Linear(2, 2)
    path = tmp_path / "legacy.safetensors"
    statevault.save({"fc.weight": source.weight, "fc.bias": source.bias}, path)
    model = statevault.build_model(Hooked, path)
    assert torch.equal(model.fc.weight, source.weight)


def test_constructor_arguments_named_like_options_go_through_kwargs(tmp_path: Path) -> None:
    class Strict(nn.Module):
        def __init__(self, strict: bool) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 2, bias=strict)

    path = tmp_path / "s.safetensors"
    statevault.save(Strict(True), path)
    model = statevault.build_model(Strict, path, kwargs={"strict": True})
    assert model.fc.bias is not None
    partial = statevault.build_model(functools.partial(Strict, strict=True), path)
    assert partial.fc.bias is not None


def test_factory_must_return_a_module(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    statevault.save({"a": torch.zeros(1)}, path)
    with pytest.raises(StateVaultError, match=r"not a torch\.nn\.Module"):
        statevault.build_model(dict, path)


class ScaledTable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(2, 2)
        table = torch.ones(4)
        table.mul_(3).add_(1)  # in-place fills on real tensors must still run
        nn.init.normal_(self.proj.weight)  # ...and on meta parameters be skipped
        self.register_buffer("table", table, persistent=False)


def test_in_place_fills_run_on_real_tensors_and_are_skipped_on_meta(tmp_path: Path) -> None:
    path = tmp_path / "t.safetensors"
    source = ScaledTable()
    statevault.save(source, path)
    with statevault.skip_init():
        model = ScaledTable()
    assert model.proj.weight.is_meta
    assert torch.equal(model.table, torch.full((4,), 4.0))
    statevault.materialize(model, path)
    assert torch.equal(model.proj.weight, source.proj.weight)
