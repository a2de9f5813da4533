"""The state stored in ``tests/data/format1.safetensors``, a file written by statevault's
format-1 writer (before format 2 moved the tree and packed the digests); rebuilt here from
deterministic values so a test can compare what format 2's reader makes of it. It was made at
commit 1b3b556 by ``statevault.save(expected_state(), path, metadata={"run": "v1"})``."""

from __future__ import annotations

from typing import Any

import torch


def expected_state() -> dict[str, Any]:
    weight = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    model = {
        "embed.weight": weight,
        "head.weight": weight,  # tied: stored once, as an alias
        "norm.bias": torch.linspace(-1, 1, 4, dtype=torch.bfloat16),
        "rotor": torch.arange(3).to(torch.complex128) * (1 + 2j),
        "steps": torch.tensor(7, dtype=torch.int64),
    }
    return {
        "model": model,
        "optim": {
            "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.full((3, 4), 0.5)}},
            "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0]}],
        },
        "epoch": 4,
        "best": float("inf"),
    }
