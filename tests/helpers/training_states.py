"""Deterministic training states for the checkpoint manager's tests: step -> exact tensors."""

from __future__ import annotations

from typing import Any

import torch


def state_for(step: int, *, numel: int = 4096) -> dict[str, Any]:
    """A small model + optimizer + counters state whose every value follows from ``step``."""
    generator = torch.Generator().manual_seed(step)
    weight = torch.randn(numel, generator=generator)
    return {
        "model": {"weight": weight, "bias": torch.full((16,), float(step))},
        "optim": {"state": {0: {"exp_avg": weight * 0.5, "step": step}}, "lr": 0.1},
        "rng": torch.Generator().manual_seed(step).get_state(),
        "step": step,
    }


def assert_state_is(state: Any, step: int, *, numel: int = 4096) -> None:
    """Bit-exact comparison with ``state_for(step)``."""
    expected = state_for(step, numel=numel)
    assert state["step"] == step
    assert torch.equal(state["model"]["weight"], expected["model"]["weight"])
    assert torch.equal(state["model"]["bias"], expected["model"]["bias"])
    assert torch.equal(
        state["optim"]["state"][0]["exp_avg"], expected["optim"]["state"][0]["exp_avg"]
    )
    assert torch.equal(state["rng"], expected["rng"])
