"""diff() streams both files in lockstep chunks, verified, with results equal to one shot."""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import statevault
from statevault.engine.tuning import VERIFY_CHUNK_BYTES
from statevault.tools import diff_streams


def _save(path: Path, obj: object) -> Path:
    statevault.save(obj, path)
    return path


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    monkeypatch.setattr(diff_streams, "CHUNK_ELEMENTS", 64)  # every tensor below streams in chunks
    yield 64


def test_equal_leading_chunks_still_count_in_the_relative_l2(
    tmp_path: Path, small_chunks: int
) -> None:
    x = torch.arange(1000, dtype=torch.float64) / 7
    y = x.clone()
    y[900:] += 0.25  # the first 14 chunks are byte-identical, the tail differs
    a, b = _save(tmp_path / "a", {"w": x}), _save(tmp_path / "b", {"w": y})
    (delta,) = statevault.diff(a, b).tensors
    assert delta.mismatched == 100
    assert delta.max_abs == pytest.approx(0.25)
    assert delta.rel_l2 == pytest.approx(float(torch.linalg.norm(x - y) / torch.linalg.norm(y)))
    same = statevault.diff(a, _save(tmp_path / "c", {"w": x}))
    assert same.ok and same.tensors[0].max_abs == 0.0


def test_damage_in_a_streamed_tensor_raises_naming_it(tmp_path: Path, small_chunks: int) -> None:
    a = _save(tmp_path / "a", {"big": torch.ones(1000), "other": torch.zeros(3)})
    b = _save(tmp_path / "b", {"big": torch.ones(1000), "other": torch.zeros(3)})
    with statevault.Checkpoint(b) as opened:
        at = opened.tensors["big"].offset + 2000
    raw = bytearray(b.read_bytes())
    raw[at] ^= 0x01
    b.write_bytes(raw)
    with pytest.raises(statevault.ChecksumMismatchError, match="'big'"):
        statevault.diff(a, b)


def test_torch_and_safetensors_sides_stream_alike(tmp_path: Path, small_chunks: int) -> None:
    state = {"w": torch.linspace(-3, 3, 999), "n": torch.tensor([math.nan, 1.0, math.inf])}
    pt = tmp_path / "s.pt"
    torch.save(state, pt)
    changed = dict(state, w=state["w"] * 2)
    report = statevault.diff(pt, _save(tmp_path / "s.sv", changed))
    assert [t.name for t in report.different] == ["w"]
    assert statevault.diff(pt, _save(tmp_path / "same.sv", state)).ok


def test_each_side_is_read_once_in_bounded_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reads are counted, not timed: a 4 MiB tensor per side costs bytes / 1 MiB reads each
    (chunks of CHUNK_ELEMENTS, each read and hashed at most 1 MiB at a time)."""
    x = torch.randn(1 << 20)  # 4 MiB of float32
    a, b = _save(tmp_path / "a", {"w": x}), _save(tmp_path / "b", {"w": x})
    sizes: list[int] = []
    lock = threading.Lock()
    preadv = os.preadv

    def counted(fd: int, buffers: list[memoryview], offset: int) -> int:
        with lock:
            sizes.append(sum(len(buffer) for buffer in buffers))
        return preadv(fd, buffers, offset)

    monkeypatch.setattr(os, "preadv", counted)
    assert statevault.diff(a, b).ok
    assert max(sizes) <= VERIFY_CHUNK_BYTES  # L2-sized pieces, hashed while in cache
    assert sum(sizes) == 2 * x.nbytes  # each side read exactly once


def test_large_int64_values_that_float64_cannot_tell_apart_differ(tmp_path: Path) -> None:
    x = torch.tensor([2**53, 5], dtype=torch.int64)
    a = _save(tmp_path / "a", {"i": x})
    b = _save(tmp_path / "b", {"i": x + torch.tensor([1, 0])})
    (delta,) = statevault.diff(a, b).tensors
    assert delta.mismatched == 1
