"""Format 3's per-block digests: large tensors are read and checked in block-sized pieces
by any thread, and each piece is checked on its own (thresholds shrunk to bytes)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import torch

import statevault
from statevault.engine import reader as reader_module
from statevault.engine import scan, tuning
from statevault.errors import ChecksumMismatchError, TruncatedFileError
from statevault.fileformat import checksums, metadata

BLOCK = 1024


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metadata, "BLOCK_BYTES", BLOCK)
    monkeypatch.setattr(tuning, "SMALL_READ_BYTES", 256)
    monkeypatch.setattr(tuning, "SMALL_WRITE_BYTES", 256)
    monkeypatch.setattr(tuning, "VERIFY_CHUNK_BYTES", 384)  # requests that cut across blocks
    monkeypatch.setattr(tuning, "CHUNK_BYTES", 512)
    monkeypatch.setattr(tuning, "SPLIT_BYTES", BLOCK)
    monkeypatch.setattr(tuning, "WRITE_CHUNK_BYTES", 700)
    monkeypatch.setattr(tuning, "PARALLEL_MIN_BYTES", 0)


def _state() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "big": torch.randn(1000, generator=generator),  # 4000 bytes: 3 blocks and a short one
        "exact": torch.randn(512, generator=generator),  # 2048 bytes: exactly 2 blocks
        "small": torch.randn(10, generator=generator),
    }


def _saved(tmp_path: Path) -> Path:
    path = tmp_path / "blocks.safetensors"
    statevault.save(_state(), path)
    return path


def test_pieces_of_one_tensor_are_read_by_several_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _saved(tmp_path)
    seen: list[tuple[str, int, int]] = []
    original = reader_module.read_blocks
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    together = threading.Barrier(2, timeout=10)  # the first two pieces are read at once

    def spy(*args: object, **kwargs: object) -> None:
        seen.append((threading.current_thread().name, args[5], len(args[4])))  # type: ignore[arg-type]
        if len(seen) <= 2:
            together.wait()
        original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(reader_module, "read_blocks", spy)
    destination = {name: torch.zeros_like(t) for name, t in _state().items()}
    with statevault.Checkpoint(path) as checkpoint:
        checkpoint.read_into(destination.items())
    for name, tensor in _state().items():
        assert torch.equal(destination[name], tensor)
    pieces = sorted((at, size) for _, at, size in seen)
    # big: 0, 1024, 2048 (1024 each) and 3072 (928 bytes); exact: 0 and 1024
    assert pieces == [(0, 1024), (0, 1024), (1024, 1024), (1024, 1024), (2048, 1024), (3072, 928)]
    # the calling thread reads too, beside the engine's kept helpers
    threads = {name for name, _, _ in seen}
    assert len(threads) == 2
    assert threads - {threading.current_thread().name} <= {
        name for name in threads if name.startswith("statevault-read")
    }


def _damage(path: Path, name: str, at: int) -> None:
    with statevault.Checkpoint(path) as checkpoint:
        offset = checkpoint.tensors[name].offset
    data = bytearray(path.read_bytes())
    data[offset + at] ^= 0x40
    path.write_bytes(data)


@pytest.mark.parametrize(("at", "block"), [(5, 0), (2047, 1), (3999, 3)])
def test_a_damaged_block_is_named_whichever_thread_reads_it(
    tmp_path: Path, at: int, block: int
) -> None:
    path = _saved(tmp_path)
    _damage(path, "big", at)
    start = block * BLOCK
    message = rf"'big' is damaged in block {block} \(bytes {start}-{start + BLOCK - 1}\)"
    with pytest.raises(ChecksumMismatchError, match=message):
        statevault.load(path)
    streamed = statevault.Checkpoint(path)
    with streamed, pytest.raises(ChecksumMismatchError, match=message):
        list(streamed.stream("big", chunk_bytes=300))  # in order, pieces across blocks
    assert [bad.name for bad in statevault.verify(path).bad] == ["big"]
    assert torch.equal(statevault.load(path, verify=False)["exact"], _state()["exact"])


def test_a_piece_cut_short_by_a_truncated_file_is_reported(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    with statevault.Checkpoint(path) as checkpoint:
        big = checkpoint.tensors["big"]
    destination = {name: torch.zeros_like(t) for name, t in _state().items()}
    checkpoint = statevault.Checkpoint(path)
    with checkpoint:
        with open(path, "r+b") as file:
            # inside the last block of "big": only its last piece meets the end, so the
            # message is the same whichever thread gets there first
            file.truncate(big.offset + 3500)
        with pytest.raises(
            TruncatedFileError, match="'big' ends early: the file ends before its byte 3500 of 4000"
        ):
            checkpoint.read_into([("big", destination["big"])])


def test_unverified_reads_split_large_tensors_too(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    _damage(path, "big", 10)
    loaded = statevault.load(path, verify=False)
    assert not torch.equal(loaded["big"], _state()["big"])  # the damaged bytes, as asked
    assert torch.equal(loaded["big"][3:], _state()["big"][3:])


def test_verify_checks_the_pieces_of_one_tensor_on_several_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _saved(tmp_path)
    seen: list[tuple[str, int, int, int]] = []
    original = scan._Hasher.piece
    together = threading.Barrier(2, timeout=10)  # the first two pieces are read at once

    def spy(self: scan._Hasher, row: int, at: int, size: int, stop: threading.Event) -> object:
        seen.append((threading.current_thread().name, row, at, size))
        if len(seen) <= 2:
            together.wait()
        return original(self, row, at, size, stop)

    monkeypatch.setattr(scan._Hasher, "piece", spy)
    report = statevault.verify(path, threads=2)
    assert report.ok and report.tensors_checked == 3
    pieces = sorted((row, at, size) for _, row, at, size in seen)
    # big (row 0): three whole blocks and a short one; exact (row 1): two blocks
    assert pieces == [(0, 0, 1024), (0, 1024, 1024), (0, 2048, 1024), (0, 3072, 928),
                      (1, 0, 1024), (1, 1024, 1024)]  # fmt: skip
    assert len({name for name, _, _, _ in seen}) == 2


def test_verify_reports_the_whole_digest_found_when_pieces_on_several_threads_are_damaged(
    tmp_path: Path,
) -> None:
    path = _saved(tmp_path)
    _damage(path, "big", 5)  # block 0
    _damage(path, "big", 3999)  # block 3, the short last one
    with statevault.Checkpoint(path) as checkpoint:
        recorded = checkpoint.vault.checksums["big"]
        damaged = bytes(checkpoint.read(["big"], verify=False)["big"].view(torch.uint8).numpy())
    report = statevault.verify(path, threads=2)
    [bad] = report.bad
    assert bad.name == "big" and bad.expected == recorded
    assert bad.found == checksums.digest(damaged, BLOCK)
    chars = checksums.DIGEST_CHARS  # blocks 1 and 2 are intact: their digests are unchanged
    assert bad.found[chars : 3 * chars] == recorded[chars : 3 * chars]
    assert bad.found[:chars] != recorded[:chars] and bad.found[3 * chars :] != recorded[3 * chars :]
