"""Loading straight to a CUDA device through pinned staging buffers (skipped without a GPU).

The staging pipeline itself is also exercised on CPU in test_io_engine.py; these tests check
the real thing: pinned buffers, side-stream copies, results usable right after return.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import statevault
from statevault.engine import tuning
from statevault.errors import ChecksumMismatchError

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _state() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    state = {f"small.{i}": torch.randn(i + 1, generator=generator) for i in range(50)}
    state["big"] = torch.randn(1 << 18, generator=generator)
    state["half"] = torch.randn(1000, generator=generator).to(torch.bfloat16)
    return state


def test_load_to_cuda_matches_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tuning, "STAGING_BYTES", 64 << 10)  # many fills, both buffers reused
    path = tmp_path / "s.safetensors"
    state = _state()
    statevault.save(state, path)
    on_gpu = statevault.load(path, device="cuda")
    for name, tensor in state.items():
        assert on_gpu[name].device.type == "cuda"
        assert torch.equal(on_gpu[name].cpu(), tensor), name


def test_load_into_and_build_model_on_cuda(tmp_path: Path) -> None:
    source = nn.Sequential(nn.Linear(64, 32), nn.LayerNorm(32))
    path = tmp_path / "m.safetensors"
    statevault.save(source, path)
    target = nn.Sequential(nn.Linear(64, 32), nn.LayerNorm(32)).cuda()
    statevault.load_into(target, path)
    built = statevault.build_model(
        lambda: nn.Sequential(nn.Linear(64, 32), nn.LayerNorm(32)), path, device="cuda"
    )
    for model in (target, built):
        for name, tensor in source.state_dict().items():
            assert torch.equal(model.state_dict()[name].cpu(), tensor), name


def test_corruption_is_detected_on_the_cuda_path(tmp_path: Path) -> None:
    path = tmp_path / "s.safetensors"
    statevault.save(_state(), path)
    with statevault.Checkpoint(path) as checkpoint:
        offset = checkpoint.tensors["big"].offset
    with path.open("r+b") as handle:
        handle.seek(offset)
        handle.write(b"\xff\xff")
    with pytest.raises(ChecksumMismatchError, match="big"):
        statevault.load(path, device="cuda")
