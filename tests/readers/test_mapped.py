"""mmap=True reads (``load``, ``Checkpoint.load`` and ``Checkpoint.mapped``): the same values
as a normal load, as views of a private mapping that outlives the checkpoint, which no write
reaches; unaligned tensors copied; damage, truncation and kinds that cannot be mapped
refused with errors whose fixes work."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import pytest
import torch
from tests.helpers.samples import assert_same, flip_byte, training_state, write_sharded

import statevault
from statevault.errors import (
    CheckpointKindError,
    ChecksumMismatchError,
    InvalidArgumentError,
    TruncatedFileError,
)


def _is_mapped(tensor: torch.Tensor, path: Path) -> bool:
    """A view of the file's mapping: its storage is the whole file, not the tensor's bytes."""
    return tensor.untyped_storage().nbytes() == os.path.getsize(path) != tensor.nbytes


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_mapped_load_equals_a_normal_load_and_shares_the_file(tmp_path: Path) -> None:
    path = tmp_path / "train.safetensors"
    statevault.save(training_state(), path)
    mapped = statevault.load(path, mmap=True)
    assert_same(mapped, statevault.load(path))
    weight = mapped["model"]["embed.weight"]
    assert _is_mapped(weight, path)
    assert mapped["model"]["head.weight"] is weight  # tied: one tensor, as saved
    assert all(_is_mapped(t, path) for t in mapped["dtypes"].values() if t.nbytes)


def test_a_write_reaches_neither_the_file_nor_another_load(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    statevault.save({"w": torch.arange(1024, dtype=torch.float32)}, path)
    before = _digest(path)
    first = statevault.load(path, mmap=True)
    second = statevault.load(path, mmap=True)
    first["w"].add_(1.0)  # copy-on-write: the page becomes this process's own
    assert first["w"][0].item() == 1.0
    assert second["w"][0].item() == 0.0
    assert statevault.load(path, mmap=True)["w"][0].item() == 0.0
    assert _digest(path) == before


def test_the_mapping_outlives_the_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    state = {"a": torch.randn(64, 64), "b": torch.randn(3)}
    statevault.save(state, path)
    with statevault.Checkpoint(path) as ckpt:
        mapped = ckpt.mapped(["a"])
        loaded = ckpt.load(mmap=True)
    assert list(mapped) == ["a"]
    torch.testing.assert_close(mapped["a"] * 2, state["a"] * 2)  # read after close
    assert_same(loaded, state)


def _plain_file(path: Path, odd: bool) -> dict[str, torch.Tensor]:
    """A plain safetensors file whose float tensor starts at an odd offset when ``odd``."""
    head = torch.arange(7, 10 if odd else 11, dtype=torch.uint8)  # 3 bytes, or 4
    values = torch.linspace(-1, 1, 12, dtype=torch.float32).reshape(3, 4)
    end = head.numel()
    header = {
        "head": {"dtype": "U8", "shape": [end], "data_offsets": [0, end]},
        "values": {"dtype": "F32", "shape": [3, 4], "data_offsets": [end, end + 48]},
    }
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    data = head.numpy().tobytes() + values.numpy().tobytes()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return {"head": head, "values": values}


@pytest.mark.parametrize("odd", [True, False], ids=["offset-3", "offset-4"])
def test_tensors_at_unaligned_offsets_are_copied_and_equal(tmp_path: Path, odd: bool) -> None:
    path = tmp_path / "plain.safetensors"
    expected = _plain_file(path, odd)
    loaded = statevault.load(path, mmap=True)
    assert_same(loaded, expected)
    assert _is_mapped(loaded["head"], path)
    assert _is_mapped(loaded["values"], path) is not odd  # an odd offset: copied, aligned
    assert loaded["values"].data_ptr() % 4 == 0


def test_sharded_and_folder_checkpoints_map_each_file(tmp_path: Path) -> None:
    tensors = {f"layer.{i}.weight": torch.randn(16, 16) for i in range(4)}
    folder = write_sharded(tmp_path / "sharded", tensors)
    mapped = statevault.load(folder, mmap=True)
    assert_same(mapped, tensors)
    shard = folder / "model-00001-of-00002.safetensors"
    assert _is_mapped(mapped["layer.0.weight"], shard)
    with statevault.Checkpoint(folder) as ckpt:
        assert_same(ckpt.mapped(["layer.3.weight"]), {"layer.3.weight": tensors["layer.3.weight"]})


def test_damage_is_found_in_the_mapping_and_the_fix_reads_anyway(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    statevault.save({"w": torch.arange(100, dtype=torch.float32)}, path)
    with statevault.Checkpoint(path) as ckpt:
        offset = ckpt.resolve("w").offset
    assert offset is not None
    flip_byte(path, offset + 8)
    with pytest.raises(ChecksumMismatchError, match=r"'w' is damaged.*verify=False"):
        statevault.load(path, mmap=True)
    damaged = statevault.load(path, mmap=True, verify=False)  # the message's fix
    assert damaged["w"][2].item() != 2.0 and damaged["w"][3].item() == 3.0


def test_a_file_truncated_after_open_is_refused_when_mapped(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    statevault.save({"w": torch.ones(4096)}, path)
    with statevault.Checkpoint(path) as ckpt:
        os.truncate(path, ckpt.file_size - 100)
        with pytest.raises(TruncatedFileError, match=r"truncated or is being rewritten"):
            ckpt.mapped()
    with pytest.raises(TruncatedFileError):  # and at open, for the next load
        statevault.load(path, mmap=True)


def test_kinds_that_cannot_be_mapped_say_how_to_load_them(tmp_path: Path) -> None:
    state = {"w": torch.randn(8, 8)}
    pt = tmp_path / "model.pt"
    torch.save(state, pt)
    with pytest.raises(CheckpointKindError, match=r"cannot be memory-mapped") as info:
        statevault.load(pt, mmap=True)
    assert_same(statevault.load(pt), state)  # fix 1: without mmap=True
    fix = str(info.value).split("convert it once with ", 1)[1].split(" and map that")[0]
    target = tmp_path / "model.safetensors"
    assert fix == f"statevault.convert({str(pt)!r}, 'model.safetensors')"
    statevault.convert(pt, target)  # fix 2: convert (to a path of our choosing), then map
    assert_same(statevault.load(target, mmap=True), state)


def test_mmap_is_for_the_cpu(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    statevault.save({"w": torch.ones(3)}, path)
    with pytest.raises(InvalidArgumentError, match=r"device='meta' was given: load with"):
        statevault.load(path, mmap=True, device="meta")
    assert_same(statevault.load(path, mmap=True, device="cpu"), {"w": torch.ones(3)})


DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.mark.parametrize("name", ["format1", "format2", "format3"])
def test_every_format_maps_and_verifies(name: str) -> None:
    with statevault.Checkpoint(DATA / f"{name}.safetensors") as ckpt:
        assert ckpt.has_checksums  # so each tensor is checked from the mapping
        assert_same(ckpt.mapped(), ckpt.read())
        assert ckpt.load(mmap=True).keys() == ckpt.load().keys()


def test_empty_and_scalar_tensors_map(tmp_path: Path) -> None:
    state = {
        "empty": torch.zeros(0, 3),
        "scalar": torch.tensor(2.5, dtype=torch.float64),
        "flag": torch.tensor([True, False]),
        "half": torch.ones(5, dtype=torch.bfloat16),
    }
    path = tmp_path / "odd.safetensors"
    statevault.save(state, path)
    assert_same(statevault.load(path, mmap=True), state)
