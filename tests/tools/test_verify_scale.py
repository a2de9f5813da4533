"""verify() on 200,000 tensors: linear work, counted (not timed), intact and fully damaged.

verify used to stream each tensor on its own (one read and one hasher per tensor) and to
sort the damaged ones with ``list.index`` inside the sort key, quadratic in their number
(a 200k-tensor file: 10 s intact, > 300 s with every tensor zeroed). It now follows the
load engine's read plan: small tensors back to back in the file are read by one ``preadv``
and hashed from that buffer, and mismatches come out in file order with no lookups.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import statevault
from statevault.engine.tuning import MAX_IOV, VERIFY_CHUNK_BYTES
from statevault.fileformat import checksums
from statevault.fileformat.table import TensorTable

COUNT = 200_000


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("many") / "many.safetensors"
    statevault.save({f"layers.{i}.w": torch.full((2,), i + 1.0) for i in range(COUNT)}, path)
    return path


class Counts:
    def __init__(self) -> None:
        self.reads = 0
        self.digests = 0
        self._lock = threading.Lock()

    def read(self) -> None:
        with self._lock:
            self.reads += 1

    def digest(self) -> None:
        with self._lock:
            self.digests += 1


@pytest.fixture
def counts(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counts]:
    seen = Counts()
    preadv, digest = os.preadv, checksums.digest

    def counted_preadv(fd: int, buffers: list[memoryview], offset: int) -> int:
        seen.read()
        return preadv(fd, buffers, offset)

    def counted_digest(buffer: memoryview, block_bytes: int | None = None) -> str:
        seen.digest()
        return digest(buffer, block_bytes)

    monkeypatch.setattr(os, "preadv", counted_preadv)
    monkeypatch.setattr(checksums, "digest", counted_digest)
    yield seen


def _read_budget(path: Path) -> int:
    """Reads a batched plan needs: one per run of MAX_IOV small tensors or 1 MiB, plus slack."""
    data = path.stat().st_size
    return COUNT // MAX_IOV + data // VERIFY_CHUNK_BYTES + 8


def test_intact_200k_tensors_hashed_once_each_with_batched_reads(
    many: Path, counts: Counts
) -> None:
    report = statevault.verify(many)
    assert report.ok and report.tensors_checked == COUNT
    assert counts.digests == COUNT  # one digest per tensor, nothing hashed twice
    assert counts.reads <= _read_budget(many)  # not one read per tensor


def test_every_tensor_damaged_is_listed_in_file_order_with_linear_work(
    many: Path, tmp_path: Path, counts: Counts
) -> None:
    zeroed = tmp_path / "zeroed.safetensors"
    with statevault.Checkpoint(many) as opened:
        start = opened.reader.header.data_offset
        order = list(opened.tensors)
    raw = bytearray(many.read_bytes())
    raw[start:] = bytes(len(raw) - start)  # every tensor 0.0: every checksum fails
    zeroed.write_bytes(raw)
    report = statevault.verify(zeroed)
    assert not report.ok and report.header_error is None
    assert [bad.name for bad in report.bad] == order  # all of them, in file order
    assert counts.digests == COUNT and counts.reads <= _read_budget(zeroed)
    text = str(report)
    assert f"DAMAGED: {COUNT} of {COUNT}" in text and f"... and {COUNT - 20} more" in text


def test_diff_of_200k_tensors_reads_each_side_in_batches(
    many: Path, counts: Counts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """diff's small-tensor batches read only their own rows (not the whole table per batch,
    which made a 200k-tensor diff quadratic: 45 s against 7 s to verify both sides)."""
    walks = []
    table_iter = TensorTable.__iter__

    def counted_iter(table: TensorTable) -> Iterator[str]:
        walks.append(len(table))
        return table_iter(table)

    monkeypatch.setattr(TensorTable, "__iter__", counted_iter)
    report = statevault.diff(many, many)
    assert report.ok and len(report.tensors) == COUNT
    assert counts.digests == 2 * COUNT  # both sides verified, each tensor hashed once
    assert counts.reads <= 2 * _read_budget(many)
    assert len(walks) <= 8  # a few whole-table walks in all, not one per batch of tensors
