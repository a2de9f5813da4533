"""Optimizer state round-trips exactly and training resumed from a checkpoint is bit-identical."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import statevault

OptimizerFactory = Callable[[Any], torch.optim.Optimizer]

OPTIMIZERS: dict[str, OptimizerFactory] = {
    "adam": lambda params: torch.optim.Adam(params, lr=1e-2, betas=(0.8, 0.95)),
    "adam-amsgrad": lambda params: torch.optim.Adam(params, lr=1e-2, amsgrad=True),
    "adamw": lambda params: torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1),
    "sgd-momentum": lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True),
}


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 1), nn.Sigmoid())


def batches(count: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(16, 6, generator=generator), torch.rand(16, 1, generator=generator))
        for _ in range(count)
    ]


def train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: list[tuple[torch.Tensor, torch.Tensor]],
) -> None:
    for x, y in data:
        optimizer.zero_grad()
        loss = nn.functional.binary_cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()


def assert_state_equal(found: Any, expected: Any, path: str = "<root>") -> None:
    """Exact equality including container types, key types and tensor dtype/bits."""
    assert type(found) is type(expected), f"{path}: {type(found)} != {type(expected)}"
    if isinstance(expected, torch.Tensor):
        assert found.dtype == expected.dtype and found.shape == expected.shape, path
        assert torch.equal(found, expected), path
    elif isinstance(expected, dict):
        assert list(found) == list(expected), path
        for (fk, fv), (ek, ev) in zip(found.items(), expected.items(), strict=True):
            assert type(fk) is type(ek), f"{path}: key {fk!r}"
            assert_state_equal(fv, ev, f"{path}.{ek}")
    elif isinstance(expected, (list, tuple)):
        assert len(found) == len(expected), path
        for i, (f, e) in enumerate(zip(found, expected, strict=True)):
            assert_state_equal(f, e, f"{path}.{i}")
    else:
        assert found == expected, f"{path}: {found!r} != {expected!r}"


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_optimizer_state_dict_roundtrips_exactly(kind: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = make_model()
    optimizer = OPTIMIZERS[kind](model.parameters())
    train(model, optimizer, batches(3, seed=1))
    expected = optimizer.state_dict()
    assert all(type(k) is int for k in expected["state"])  # the int-key case we must keep
    path = tmp_path / "optim.safetensors"
    statevault.save(expected, path)
    found = statevault.load(path)
    assert_state_equal(found, expected)
    if kind.startswith("adam"):
        assert isinstance(found["param_groups"][0]["betas"], tuple)
        step = found["state"][0]["step"]
        assert isinstance(step, torch.Tensor) and step.dtype == torch.float32 and step.dim() == 0


def test_param_groups_with_mixed_settings_roundtrip(tmp_path: Path) -> None:
    model = make_model()
    optimizer = torch.optim.Adam(
        [
            {"params": model[0].parameters(), "lr": 1e-3, "weight_decay": 0.0},
            {"params": model[2].parameters(), "lr": 1e-4, "eps": 1e-6, "foreach": None},
        ]
    )
    train(model, optimizer, batches(1, seed=2))
    path = tmp_path / "groups.safetensors"
    statevault.save({"optimizer": optimizer.state_dict()}, path)
    assert_state_equal(statevault.load(path), {"optimizer": optimizer.state_dict()})


@pytest.mark.parametrize("kind", ["adam", "sgd-momentum"])
def test_resumed_training_is_bit_identical(kind: str, tmp_path: Path) -> None:
    first, second = batches(5, seed=10), batches(4, seed=11)

    torch.manual_seed(3)
    straight = make_model()
    straight_optim = OPTIMIZERS[kind](straight.parameters())
    train(straight, straight_optim, first + second)

    torch.manual_seed(3)
    interrupted = make_model()
    interrupted_optim = OPTIMIZERS[kind](interrupted.parameters())
    train(interrupted, interrupted_optim, first)
    path = tmp_path / "ckpt.safetensors"
    statevault.save(
        {
            "model": interrupted.state_dict(),
            "optimizer": interrupted_optim.state_dict(),
            "epoch": 5,
        },
        path,
    )
    del interrupted, interrupted_optim

    torch.manual_seed(99)  # a different init, so only the checkpoint can make them agree
    resumed = make_model()
    resumed_optim = OPTIMIZERS[kind](resumed.parameters())
    checkpoint = statevault.load(path)
    report = statevault.load_into(resumed, checkpoint["model"])
    assert report.ok
    resumed_optim.load_state_dict(checkpoint["optimizer"])
    assert checkpoint["epoch"] == 5
    train(resumed, resumed_optim, second)

    for (name, got), (_, want) in zip(
        resumed.state_dict().items(), straight.state_dict().items(), strict=True
    ):
        assert torch.equal(got, want), name
    assert_state_equal(resumed_optim.state_dict(), straight_optim.state_dict())


def test_resume_from_file_with_load_into_path(tmp_path: Path) -> None:
    """load_into straight from the file (fast path) resumes as well as load + load_into."""
    data = batches(6, seed=5)
    torch.manual_seed(4)
    straight = make_model()
    straight_optim = OPTIMIZERS["adam"](straight.parameters())
    train(straight, straight_optim, data)

    torch.manual_seed(4)
    model = make_model()
    optim = OPTIMIZERS["adam"](model.parameters())
    train(model, optim, data[:2])
    statevault.save(model, tmp_path / "model.safetensors")
    statevault.save(optim.state_dict(), tmp_path / "optim.safetensors")

    fresh = make_model()
    fresh_optim = OPTIMIZERS["adam"](fresh.parameters())
    statevault.load_into(fresh, tmp_path / "model.safetensors")
    fresh_optim.load_state_dict(statevault.load(tmp_path / "optim.safetensors"))
    train(fresh, fresh_optim, data[2:])
    for name, value in straight.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value), name
