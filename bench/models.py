"""Model shapes the benchmark loads: an LLM-like stack and 10,000-module flat/nested nets."""

from __future__ import annotations

import math

import torch
from torch import nn


class Block(nn.Module):
    """One transformer block's parameters (attention + MLP + norms); no forward needed."""

    def __init__(self, dim: int, hidden: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim, bias=False, dtype=dtype)
        self.k = nn.Linear(dim, dim, bias=False, dtype=dtype)
        self.v = nn.Linear(dim, dim, bias=False, dtype=dtype)
        self.o = nn.Linear(dim, dim, bias=False, dtype=dtype)
        self.norm2 = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, hidden, dtype=dtype)
        self.down = nn.Linear(hidden, dim, dtype=dtype)


class LLMLike(nn.Module):
    """Embedding, N blocks (fp32 and bf16 alternating), head, and a computed rotary table."""

    def __init__(self, *, dim: int, layers: int, vocab: int, max_len: int = 2048) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(
            Block(dim, 4 * dim, torch.float32 if i % 2 == 0 else torch.bfloat16)
            for i in range(layers)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        inv = 1.0 / (10000 ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv)
        self.register_buffer("rotary", torch.cat([angles.cos(), angles.sin()], 1), persistent=False)


def llm_config(target_bytes: int) -> dict[str, int]:
    """Pick dim/layers/vocab so the state is about ``target_bytes`` (12 d^2 weights a block)."""
    big = target_bytes >= (1 << 30)
    dim, vocab = (2048, 32000) if big else (1024, 8000)
    per_block = 12 * dim * dim * 3  # half the blocks fp32 (4 bytes), half bf16 (2): 3 on average
    fixed = 2 * vocab * dim * 4
    layers = max(1, round((target_bytes - fixed) / per_block))
    return {"dim": dim, "layers": layers, "vocab": vocab}


class Flat(nn.Module):
    """``count`` Linear layers in one flat ModuleList (load_state_dict is quadratic here)."""

    def __init__(self, *, count: int, width: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(count))


class Nested(nn.Module):
    """The same layers grouped sqrt(count) per ModuleList, as real models nest them."""

    def __init__(self, *, count: int, width: int) -> None:
        super().__init__()
        group = max(1, math.isqrt(count))
        self.groups = nn.ModuleList(
            nn.ModuleList(nn.Linear(width, width) for _ in range(min(group, count - start)))
            for start in range(0, count, group)
        )


def build(kind: str, config: dict[str, int]) -> nn.Module:
    if kind == "llm":
        return LLMLike(**config)
    if kind == "flat":
        return Flat(**config)
    if kind == "nested":
        return Nested(**config)
    raise ValueError(f"unknown model kind {kind!r}")


def state_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())
