"""Checkpoints for the HTML report tests: a small transformer-like model, hostile names.

Builders, not tests: every file is made inside the caller's directory.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

import statevault

HOSTILE = "<script>alert(1)</script>"
HOSTILE_META = "</script><!--<script>alert(2)</script>"


def layered_state(layers: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    """Blocks with attention and MLP weights, an embedding, a head, and some flags."""
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {"embed.weight": torch.randn(64, 16, generator=g)}
    for i in range(layers):
        block = f"blocks.{i}"
        state[f"{block}.attn.qkv.weight"] = torch.randn(48, 16, generator=g) * (1 + i / 10)
        state[f"{block}.mlp.up.weight"] = torch.randn(64, 16, generator=g).bfloat16()
        state[f"{block}.mlp.down.weight"] = torch.randn(16, 64, generator=g)
        state[f"{block}.norm.weight"] = torch.ones(16)
        state[f"{block}.norm.bias"] = torch.zeros(16)
    state["blocks.3.mlp.down.weight"] = state["blocks.3.mlp.down.weight"] * 40  # an outlier
    state["head.weight"] = torch.randn(10, 16, generator=g)
    state["head.weight"][0, :3] = torch.tensor([math.nan, math.inf, 1.0])
    return state


def save_layered(directory: Path, name: str = "model.safetensors", **changes: torch.Tensor) -> Path:
    state = layered_state()
    state.update(changes)
    path = directory / name
    statevault.save(
        {"model": state, "epoch": 7, "note": HOSTILE},
        path,
        metadata={"run": "r1", HOSTILE: HOSTILE_META},
    )
    return path


def save_hostile(directory: Path) -> Path:
    path = directory / "hostile.safetensors"
    statevault.save(
        {HOSTILE: torch.ones(4), "ok": torch.arange(4.0), "</script>": torch.zeros(2)},
        path,
        metadata={HOSTILE: HOSTILE_META},
    )
    return path
