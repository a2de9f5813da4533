"""Checkpoint.get_slice: the same parts as safetensors' get_slice, reading only those bytes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import safetensors
import torch

import statevault

KEYS: list[Any] = [
    slice(2, 5),
    (slice(None), slice(1, 3)),
    (1, slice(None), slice(0, 2)),
    (slice(None), slice(None), 2),
    (slice(-3, None), slice(4, 2)),  # empty in dimension 1
    slice(None),
]


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    tensors = {"t": torch.randn(7, 5, 3), "h": torch.randn(6, 4).half(), "n": torch.arange(20)}
    statevault.save(tensors, tmp_path / "m.safetensors")
    return tmp_path / "m.safetensors"


@pytest.mark.parametrize("key", KEYS, ids=repr)
def test_slices_equal_safetensors_slices(saved: Path, key: Any) -> None:
    with statevault.Checkpoint(saved) as ours, safetensors.safe_open(saved, framework="pt") as ref:
        mine, theirs = ours.get_slice("t"), ref.get_slice("t")
        assert mine.get_shape() == theirs.get_shape()
        assert mine.get_dtype() == theirs.get_dtype() == "F32"
        assert torch.equal(mine[key], theirs[key])
        assert torch.equal(ours.get_slice("h")[1:3], ref.get_slice("h")[1:3])


def test_a_partial_slice_reads_only_its_bytes(saved: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    read: list[int] = []
    real = os.preadv

    def counting(fd: int, buffers: list[memoryview], offset: int) -> int:
        got = real(fd, buffers, offset)
        read.append(got)
        return got

    with statevault.Checkpoint(saved) as ckpt:
        monkeypatch.setattr(os, "preadv", counting)
        part = ckpt.get_slice("t")[:, 1:3]
    assert sum(read) == part.nbytes == 7 * 2 * 3 * 4


def test_slices_of_a_sharded_checkpoint(tmp_path: Path) -> None:
    tensors = {f"w{i}": torch.randn(10, 10) for i in range(3)}
    statevault.save(tensors, tmp_path / "m.safetensors", max_shard_size=500)
    with statevault.Checkpoint(tmp_path) as ckpt:
        assert torch.equal(ckpt.get_slice("w2")[3:5, 2:], tensors["w2"][3:5, 2:])


@pytest.mark.parametrize("key", [slice(0, 4, 2), (0, 0, 0, 0), "a", 7])
def test_unsupported_indexing_is_a_clear_error(saved: Path, key: Any) -> None:
    with (
        statevault.Checkpoint(saved) as ckpt,
        pytest.raises(statevault.InvalidArgumentError, match="'t'"),
    ):
        ckpt.get_slice("t")[key]
