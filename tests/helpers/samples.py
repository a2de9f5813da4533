"""Real checkpoints for the CLI-facing tests (inspect, verify, diff, convert, cli).

Builders, not tests: every file is made inside the caller's ``tmp_path``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

import statevault
from statevault.fileformat.dtypes import SPECS, dtype_name


def random_tensor(dtype: torch.dtype, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Random bytes viewed as ``dtype``: works for every dtype, float4 and complex32 too."""
    generator = torch.Generator().manual_seed(seed)
    numel = math.prod(shape)
    raw = torch.randint(0, 256, (numel * dtype.itemsize,), dtype=torch.uint8, generator=generator)
    return raw.view(dtype).reshape(shape)


def all_dtypes() -> dict[str, torch.Tensor]:
    """One tensor per dtype statevault can store (names are the dtype names)."""
    return {
        dtype_name(dtype): random_tensor(dtype, (3, 4), seed) for seed, dtype in enumerate(SPECS)
    }


class TiedModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(10, 6)
        self.block = torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.LayerNorm(6))
        self.head = torch.nn.Linear(6, 10, bias=False)
        self.head.weight = self.embed.weight  # tied, as in language models


def training_state() -> dict[str, Any]:
    """Nested state as a training loop saves it: model (tied), optimizer, scalars."""
    torch.manual_seed(0)
    model = TiedModel()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    out = model.head(model.block(model.embed(torch.tensor([1, 2, 3]))))
    out.sum().backward()
    optimizer.step()
    return {
        "model": model.state_dict(),
        "optim": optimizer.state_dict(),
        "epoch": 3,
        "best": float("nan"),
        "history": [0.5, 0.25],
        "shape": (2, 3),
        "dtypes": all_dtypes(),
    }


# Dtypes the legacy (pre-1.6) torch.save format has storage classes for.
LEGACY_DTYPES = frozenset(
    {"float64", "float32", "float16", "bfloat16", "complex64", "complex128", "int64", "int32"}
    | {"int16", "int8", "uint8", "bool"}
)


def legacy_state() -> dict[str, Any]:
    """The training state with only the dtypes a legacy ``.pt`` can hold."""
    state = training_state()
    state["dtypes"] = {n: t for n, t in state["dtypes"].items() if n in LEGACY_DTYPES}
    return state


def tensor_count(obj: Any) -> int:
    return len(statevault.fileformat.tree.flatten(obj)[1])


def numel_of_distinct(obj: Any) -> int:
    """Elements of distinct tensors (tied ones counted once), computed from the object."""
    seen: dict[tuple[int, int, tuple[int, ...]], int] = {}
    for tensor in statevault.fileformat.tree.flatten(obj)[1].values():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        seen[key] = tensor.numel()
    return sum(seen.values())


def assert_same(x: Any, y: Any, path: str = "") -> None:
    """Deep equality for checkpoints: types, keys, bit-exact tensors (NaN payloads too)."""
    if isinstance(x, torch.Tensor):
        assert isinstance(y, torch.Tensor), path
        assert x.dtype == y.dtype and x.shape == y.shape, (path, x.dtype, y.dtype)
        assert torch.equal(x.reshape(-1).view(torch.uint8), y.reshape(-1).view(torch.uint8)), path
        return
    if isinstance(x, dict):
        assert isinstance(y, dict) and list(x) == list(y), (path, list(x), y)
        for key in x:
            assert_same(x[key], y[key], f"{path}.{key}")
        return
    if isinstance(x, (list, tuple)):
        assert type(x) is type(y) and len(x) == len(y), path
        for i, (a, b) in enumerate(zip(x, y, strict=True)):
            assert_same(a, b, f"{path}.{i}")
        return
    if isinstance(x, float) and math.isnan(x):
        assert isinstance(y, float) and math.isnan(y), path
        return
    assert type(x) is type(y) and x == y, (path, x, y)


def write_sharded(directory: Path, tensors: dict[str, torch.Tensor], shards: int = 2) -> Path:
    """A Hugging Face-style sharded checkpoint written with the safetensors library."""
    directory.mkdir(parents=True, exist_ok=True)
    names = list(tensors)
    weight_map: dict[str, str] = {}
    for i in range(shards):
        shard = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n].contiguous() for n in names[i::shards]}
        save_file(part, str(directory / shard), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, shard))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    return directory


def flip_byte(path: Path, offset: int) -> None:
    with path.open("r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))


def poison_freed_memory(numels: list[int]) -> None:
    """Fill blocks of the sizes about to be allocated with NaN, then free them for reuse."""
    blocks = [torch.full((n,), float("nan")) for n in numels for _ in range(8)]
    del blocks
