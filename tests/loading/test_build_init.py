"""build_model / materialize with strict=False never hand out uninitialised memory.

Tensors the file does not fill (missing, or skipped for their shape: the new-head fine-tune)
get the module's own initialisation. Freed memory is poisoned with NaN before each build, so
a tensor left as ``torch.empty`` returned it shows up as NaN (the old code did, every time).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import statevault
from helpers.samples import poison_freed_memory
from statevault import StateVaultError


class Head(nn.Module):
    def __init__(self, features: int, classes: int) -> None:
        super().__init__()
        self.body = nn.Linear(features, features)
        self.fc = nn.Linear(features, classes)


@settings(max_examples=25, deadline=None)
@given(
    features=st.integers(1, 24),
    saved_classes=st.integers(1, 6),
    classes=st.integers(1, 6),
    drop_body_bias=st.booleans(),
)
def test_every_unfilled_tensor_gets_the_modules_own_initialisation(
    tmp_path_factory: pytest.TempPathFactory,
    features: int,
    saved_classes: int,
    classes: int,
    drop_body_bias: bool,
) -> None:
    source = Head(features, saved_classes)
    state = {
        k: v for k, v in source.state_dict().items() if not (drop_body_bias and k == "body.bias")
    }
    path = tmp_path_factory.mktemp("head") / "head.safetensors"
    statevault.save(state, path)
    poison_freed_memory([features * features, features, features * classes, classes])
    with statevault.skip_init():
        model = Head(features, classes)
    report = statevault.materialize(model, path, strict=False)

    unfilled = {"fc.weight", "fc.bias"} if classes != saved_classes else set()
    if drop_body_bias:
        unfilled |= {"body.bias"}
    assert set(report.initialised) == unfilled
    bound = 1 / math.sqrt(features)  # nn.Linear.reset_parameters: U(-1/sqrt(fan_in), ...)
    for key, value in model.state_dict().items():
        assert torch.isfinite(value).all(), key
        if key in unfilled:
            assert value.abs().max() <= bound, key
        else:  # filled from the file, over the initialisation of its module
            assert torch.equal(value, state[key]), key
    if unfilled:
        assert any("initialised by reset_parameters()" in note for note in report.notes)


def test_build_model_new_head_is_initialised_and_reported(tmp_path: Path) -> None:
    source = Head(16, 3)
    path = tmp_path / "head.safetensors"
    statevault.save(source, path)
    poison_freed_memory([16 * 5, 5])
    model = statevault.build_model(Head, path, args=(16, 5), strict=False)
    assert torch.isfinite(model.fc.weight).all() and torch.isfinite(model.fc.bias).all()
    assert model.fc.weight.abs().max() <= 1 / math.sqrt(16)
    assert model.fc.weight.std() > 0  # drawn, not a constant fill
    assert torch.equal(model.body.weight, source.body.weight)


class Scaled(nn.Module):
    """A module with its own parameter and no reset_parameters(): nothing can initialise it."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3))
        self.fc = nn.Linear(2, 2)


def test_a_tensor_nothing_can_initialise_is_an_error_and_the_module_stays_on_meta(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.safetensors"
    statevault.save({"fc.weight": torch.zeros(2, 2), "fc.bias": torch.zeros(2)}, path)
    with statevault.skip_init():
        model = Scaled()
    with pytest.raises(StateVaultError, match=r"neither reset_parameters\(\).*: scale"):
        statevault.materialize(model, path, strict=False)
    assert model.scale.is_meta and model.fc.weight.is_meta  # put back, not garbage


class LazyInit(nn.Module):
    """reset_parameters() that leaves one of its tensors unwritten."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.zeros(2))
        self.b = nn.Parameter(torch.zeros(2))

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.a.zero_()


def test_an_initialisation_that_leaves_a_tensor_unwritten_is_caught(tmp_path: Path) -> None:
    path = tmp_path / "lazy.safetensors"
    statevault.save({"x": torch.zeros(1)}, path)
    with statevault.skip_init():
        model = LazyInit()
    with pytest.raises(StateVaultError, match=r"did not write them: b"):
        statevault.materialize(model, path, strict=False)
    assert model.a.is_meta and model.b.is_meta


def test_a_strict_failure_leaves_the_module_on_meta(tmp_path: Path) -> None:
    path = tmp_path / "h.safetensors"
    statevault.save(Head(4, 3), path)
    with statevault.skip_init():
        model = Head(4, 5)
    with pytest.raises(statevault.StateDictMismatchError):
        statevault.materialize(model, path)
    assert all(p.is_meta for p in model.parameters())  # no uninitialised memory left in it
    report = statevault.materialize(model, path, strict=False)  # and it can be retried
    assert report.initialised == ("fc.bias", "fc.weight")
