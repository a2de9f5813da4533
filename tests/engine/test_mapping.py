"""engine.mapping: private file mappings, views of them, and block checks from them.

Thresholds are shrunk to bytes (as in test_block_reads) so the threaded, block-cut check
runs on kilobytes.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import torch
from tests.helpers.samples import flip_byte

import statevault
from statevault.engine import mapping, tuning
from statevault.errors import ChecksumMismatchError, TruncatedFileError
from statevault.fileformat import metadata

BLOCK = 1024


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metadata, "BLOCK_BYTES", BLOCK)
    monkeypatch.setattr(tuning, "SPLIT_BYTES", BLOCK)
    monkeypatch.setattr(tuning, "BATCH_BYTES", 512)
    monkeypatch.setattr(tuning, "PARALLEL_MIN_BYTES", 0)


def _file(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "bytes.bin"
    path.write_bytes(data)
    return path


def test_a_file_shorter_than_needed_is_refused_before_mapping(tmp_path: Path) -> None:
    path = _file(tmp_path, bytes(100))
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(TruncatedFileError, match=r"has 100 bytes but its header needs 101"):
            mapping.map_file(fd, needed=101, source=path)
        whole = mapping.map_file(fd, needed=100, source=path)
    finally:
        os.close(fd)
    assert whole.numel() == 100  # the mapping outlives the descriptor it was made from


def test_aligned_views_share_the_mapping_and_unaligned_ones_are_copies(tmp_path: Path) -> None:
    values = torch.arange(8, dtype=torch.float32)
    data = b"\x01" + values.numpy().tobytes() + bytes(3)  # floats at offset 1: unaligned
    path = _file(tmp_path, bytes(3) + data)  # ... and at offset 4: aligned
    fd = os.open(path, os.O_RDONLY)
    try:
        whole = mapping.map_file(fd, needed=len(data), source=path)
    finally:
        os.close(fd)
    aligned = mapping.MappedTensor("a", 4, 32, torch.float32, (2, 4), None)
    shifted = mapping.MappedTensor("b", 3, 32, torch.float32, (8,), None)
    view, copied = mapping.view_of(whole, aligned)
    assert not copied and view.data_ptr() == whole.data_ptr() + 4
    assert view.untyped_storage().data_ptr() == whole.untyped_storage().data_ptr()
    assert torch.equal(view, values.reshape(2, 4))
    copy, copied = mapping.view_of(whole, shifted)
    assert copied and copy.data_ptr() % 4 == 0
    assert copy.untyped_storage().nbytes() == 32  # its own memory, not the mapping
    expected = torch.frombuffer(bytearray(data[:32]), dtype=torch.float32)
    assert torch.equal(copy, expected)


def _items(path: Path) -> tuple[torch.Tensor, list[mapping.MappedTensor], int | None]:
    """The whole file mapped, and where each tensor is, as the reader would map it."""
    with statevault.Checkpoint(path) as ckpt:
        items = []
        for name in list(ckpt.keys()):
            info = ckpt.resolve(name)
            assert info.offset is not None
            items.append(
                mapping.MappedTensor(
                    name, info.offset, info.nbytes, info.dtype, info.shape, info.checksum
                )
            )
        block = ckpt.reader.block_bytes
        whole = mapping.map_file(ckpt.reader.fileno(), needed=ckpt.file_size, source=path)
    return whole, items, block


def test_every_block_is_checked_on_several_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    generator = torch.Generator().manual_seed(0)
    state = {"big": torch.randn(1000, generator=generator), "small": torch.randn(10)}
    path = tmp_path / "blocks.safetensors"
    statevault.save(state, path)
    whole, items, block = _items(path)
    assert block == BLOCK
    seen: list[tuple[str, int]] = []
    original = mapping._check_piece

    def spy(*args: object) -> None:
        seen.append((threading.current_thread().name, args[2]))  # type: ignore[arg-type]
        original(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(mapping, "_check_piece", spy)
    mapping.check_mapped(whole, items, block_bytes=block, source=path)
    assert sorted(at for _, at in seen) == [0, 1024, 2048, 3072]  # 4000 bytes: 4 blocks
    assert all(name.startswith("statevault-map") for name, _ in seen)


def test_a_damaged_block_or_small_tensor_is_named(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    path = tmp_path / "blocks.safetensors"
    state = {"big": torch.randn(1000, generator=generator), "small": torch.randn(10)}
    statevault.save(state, path)
    with statevault.Checkpoint(path) as ckpt:
        big, small = ckpt.resolve("big").offset, ckpt.resolve("small").offset
    assert big is not None and small is not None
    whole, items, block = _items(path)
    mapping.check_mapped(whole, items, block_bytes=block, source=path)  # intact: no error
    flip_byte(path, big + 2 * BLOCK + 5)
    whole, items, block = _items(path)
    with pytest.raises(
        ChecksumMismatchError, match=r"'big' is damaged in block 2 \(bytes 2048-3071\)"
    ):
        mapping.check_mapped(whole, items, block_bytes=block, source=path)
    flip_byte(path, big + 2 * BLOCK + 5)  # restored
    flip_byte(path, small + 3)
    whole, items, block = _items(path)
    with pytest.raises(ChecksumMismatchError, match=r"'small' is damaged: checksum expected"):
        mapping.check_mapped(whole, items, block_bytes=block, source=path)
