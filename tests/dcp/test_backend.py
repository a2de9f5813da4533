"""statevault.dcp in one process (DCP's no-dist mode): what is stored and how it fails."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

import statevault
from statevault.dcp import Reader, Writer
from statevault.errors import CheckpointNotFoundError, ChecksumMismatchError, HeaderError
from statevault.fileformat import metadata as vault_metadata

# DCP warns on every save/load without an initialised process group (its single-process mode)
pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")


def _state() -> dict[str, Any]:
    torch.manual_seed(0)
    weight = torch.randn(6, 4)
    return {
        "model": {"weight": weight, "tied": weight, "half": torch.randn(3).bfloat16()},
        "view": torch.randn(4, 6).t(),  # non-contiguous: only the projection is stored
        "empty": torch.zeros(0, 3),
        "epoch": 5,
        "names": ["a", "b"],
    }


def _blank() -> dict[str, Any]:
    return {
        "model": {
            "weight": torch.zeros(6, 4),
            "tied": torch.zeros(6, 4),
            "half": torch.zeros(3).bfloat16(),
        },
        "view": torch.zeros(6, 4),
        "empty": torch.ones(0, 3),
        "epoch": 0,
        "names": [],
    }


def _assert_same(found: dict[str, Any], expected: dict[str, Any]) -> None:
    for key, value in expected.items():
        if isinstance(value, dict):
            _assert_same(found[key], value)
        elif isinstance(value, torch.Tensor):
            assert found[key].dtype == value.dtype and torch.equal(found[key], value), key
        else:
            assert found[key] == value, key


def test_round_trip_of_tensors_and_other_values(tmp_path: Path) -> None:
    dcp.save(_state(), storage_writer=Writer(tmp_path / "ckpt"))
    loaded = _blank()
    dcp.load(loaded, storage_reader=Reader(tmp_path / "ckpt"))
    _assert_same(loaded, _state())


def test_a_chunk_of_several_checksum_blocks_is_verified_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Format 3 records a digest per block; a chunk larger than one block was refused as
    damaged (its joined digests compared with one digest of the whole) before the fix."""
    monkeypatch.setattr(vault_metadata, "BLOCK_BYTES", 64)  # 8 MiB in real files
    state = {"big": torch.arange(100, dtype=torch.float32)}  # 400 bytes: 7 blocks
    dcp.save(state, storage_writer=Writer(tmp_path))
    loaded = {"big": torch.zeros(100)}
    dcp.load(loaded, storage_reader=Reader(tmp_path))
    assert torch.equal(loaded["big"], state["big"])
    at = statevault.Checkpoint(_rank_file(tmp_path)).tensors["big"].offset
    assert at is not None
    with _rank_file(tmp_path).open("r+b") as f:
        f.seek(at + 300)  # block 4
        f.write(b"\xff")
    with pytest.raises(CheckpointException) as caught:
        dcp.load({"big": torch.zeros(100)}, storage_reader=Reader(tmp_path))
    ((error, _),) = caught.value.failures.values()
    assert isinstance(error, ChecksumMismatchError) and "'big' is damaged in block 4" in str(error)


def test_the_directory_is_one_statevault_file_and_a_json_index(tmp_path: Path) -> None:
    dcp.save(_state(), storage_writer=Writer(tmp_path))
    names = sorted(os.listdir(tmp_path))
    assert names[-1] == "statevault-dcp.json" and len(names) == 2
    index = json.loads((tmp_path / names[-1]).read_text())
    assert index["items"]["epoch"]["kind"] == "bytes"
    assert index["items"]["model.weight"]["chunks"] == [
        {"offsets": [0, 0], "sizes": [6, 4], "file": names[0], "key": "model.weight"}
    ]
    assert statevault.verify(tmp_path / names[0]).ok
    stored = statevault.load(tmp_path / names[0])
    assert torch.equal(stored["model.weight"], _state()["model"]["weight"])
    whole = statevault.load(tmp_path)  # the directory, without torch.distributed
    assert sorted(whole) == ["empty", "model.half", "model.tied", "model.weight", "view"]
    assert torch.equal(whole["view"], _state()["view"])


def test_async_save(tmp_path: Path) -> None:
    future = dcp.async_save(_state(), storage_writer=Writer(tmp_path))
    future.result(timeout=60)
    loaded = _blank()
    dcp.load(loaded, storage_reader=Reader(tmp_path))
    _assert_same(loaded, _state())


def test_a_new_save_replaces_the_old_files_only_after_its_index(tmp_path: Path) -> None:
    dcp.save(_state(), storage_writer=Writer(tmp_path))
    first = set(os.listdir(tmp_path))
    changed = _state()
    changed["epoch"] = 6
    dcp.save(changed, storage_writer=Writer(tmp_path))
    second = set(os.listdir(tmp_path))
    assert len(second) == 2 and not (first - {"statevault-dcp.json"}) & second
    loaded = _blank()
    dcp.load(loaded, storage_reader=Reader(tmp_path))
    assert loaded["epoch"] == 6


def test_every_superseded_rank_file_is_removed_and_nothing_else(tmp_path: Path) -> None:
    """Several at once (a 3-rank save's, or killed saves' leftovers): removed in parallel."""
    dcp.save(_state(), storage_writer=Writer(tmp_path))
    for rank in range(1, 4):  # what a killed 4-rank save would leave beside the checkpoint
        shutil.copy(_rank_file(tmp_path), tmp_path / f"rank{rank:05d}-{'ab' * rank}.safetensors")
    (tmp_path / "rank-notes.txt").write_text("kept: not named like a rank file")
    dcp.save(_state(), storage_writer=Writer(tmp_path))
    names = sorted(os.listdir(tmp_path))
    assert len(names) == 3 and names[0] == "rank-notes.txt" and names[2] == "statevault-dcp.json"
    assert names[1].startswith("rank00000-")


def _load_error(directory: Path, **options: Any) -> BaseException:
    """What the reader raised: DCP wraps each rank's exception in a CheckpointException."""
    with pytest.raises(CheckpointException) as caught:
        dcp.load(_blank(), storage_reader=Reader(directory, **options))
    ((error, _),) = caught.value.failures.values()
    return error


def _rank_file(directory: Path) -> Path:
    return next(p for p in directory.iterdir() if p.name.startswith("rank"))


def test_a_damaged_chunk_fails_the_load_naming_it(tmp_path: Path) -> None:
    dcp.save(_state(), storage_writer=Writer(tmp_path))
    rank_file = _rank_file(tmp_path)
    entry = statevault.Checkpoint(rank_file).tensors["model.weight"]
    assert entry.offset is not None
    with rank_file.open("r+b") as f:
        f.seek(entry.offset + 5)
        byte = f.read(1)
        f.seek(entry.offset + 5)
        f.write(bytes([byte[0] ^ 0xFF]))
    error = _load_error(tmp_path)
    assert isinstance(error, ChecksumMismatchError) and "model.weight" in str(error)
    dcp.load(_blank(), storage_reader=Reader(tmp_path, verify=False))  # asked not to check


def test_a_directory_without_an_index_is_no_checkpoint(tmp_path: Path) -> None:
    dcp.save(_state(), storage_writer=Writer(tmp_path))
    (tmp_path / "statevault-dcp.json").unlink()
    with pytest.raises(CheckpointNotFoundError, match="written last"):
        Reader(tmp_path).read_metadata()
    assert "written last" in str(_load_error(tmp_path))  # DCP re-raises it in its own type


def test_a_rank_file_replaced_under_the_index_is_refused(tmp_path: Path) -> None:
    dcp.save(_state(), storage_writer=Writer(tmp_path))
    statevault.save({"other": torch.zeros(2)}, _rank_file(tmp_path))
    error = _load_error(tmp_path)
    assert isinstance(error, HeaderError) and "replaced after the index" in str(error)
