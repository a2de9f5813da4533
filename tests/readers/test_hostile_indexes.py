"""Hostile shard indexes, one named case each (the fuzz in test_fuzz_readers.py covers random
ones), and what ``inspect`` of a 100-shard checkpoint reads.

Each case is an index we did not write, in Hugging Face's plain form (no statevault binding
in its metadata), and gives one clear statevault error that names the problem; nothing
outside the checkpoint's directory is opened. Reads and opens are recorded by wrapping the
``os`` functions the readers use.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

import statevault
from statevault import CheckpointNotFoundError, HeaderError, StateVaultError
from statevault.readers.sharded import MAX_INDEX_BYTES
from statevault.readers.sniff import HEAD_BYTES

Read = tuple[str, int, int]  # (real path, offset, bytes)


def _path_of(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


@contextmanager
def recorded(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[list[str], list[Read]]]:
    """Every path opened and every (path, offset, length) read while the block runs."""
    opened: list[str] = []
    reads: list[Read] = []
    real_open, real_read, real_pread, real_preadv = os.open, os.read, os.pread, os.preadv

    def open_(path: Any, *args: Any, **kwargs: Any) -> int:
        fd = real_open(path, *args, **kwargs)
        opened.append(_path_of(fd))
        return fd

    def read(fd: int, n: int) -> bytes:
        at = os.lseek(fd, 0, os.SEEK_CUR)
        data = real_read(fd, n)
        reads.append((_path_of(fd), at, len(data)))
        return data

    def pread(fd: int, n: int, offset: int) -> bytes:
        data = real_pread(fd, n, offset)
        reads.append((_path_of(fd), offset, len(data)))
        return data

    def preadv(fd: int, buffers: Any, offset: int, *args: Any) -> int:
        got = real_preadv(fd, buffers, offset, *args)
        reads.append((_path_of(fd), offset, got))
        return got

    for name, wrapper in (("open", open_), ("read", read), ("pread", pread), ("preadv", preadv)):
        monkeypatch.setattr(os, name, wrapper)
    try:
        yield opened, reads
    finally:
        monkeypatch.undo()


def hf_checkpoint(directory: Path, shards: int = 2) -> dict[str, str]:
    """A sharded checkpoint whose index is Hugging Face's plain one; its weight_map."""
    directory.mkdir(parents=True, exist_ok=True)
    state = {f"layer{i}.weight": torch.full((64,), float(i)) for i in range(shards)}
    statevault.save(state, directory / "model.safetensors", max_shard_size=256)
    index = directory / "model.safetensors.index.json"
    document = json.loads(index.read_text())
    weight_map: dict[str, str] = document["weight_map"]
    assert len(set(weight_map.values())) == shards
    write_index(directory, weight_map)
    return weight_map


def write_index(directory: Path, weight_map: dict[str, str]) -> Path:
    index = directory / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 512}, "weight_map": weight_map}))
    return index


ENTRY_POINTS: list[tuple[str, Callable[[Path], object]]] = [
    ("load", statevault.load),
    ("inspect", statevault.inspect),
    ("Checkpoint", lambda source: statevault.Checkpoint(source).close()),
]


def refused(directory: Path, monkeypatch: pytest.MonkeyPatch, match: str) -> list[str]:
    """Each entry point raises one statevault error matching ``match``; the paths opened."""
    with pytest.raises((HeaderError, CheckpointNotFoundError), match=match) as caught:
        statevault.load(directory)  # the directory, as well as the index below
    assert "model.safetensors.index.json" in str(caught.value)  # the index is named
    all_opened: list[str] = []
    for _, entry in ENTRY_POINTS:
        with (
            recorded(monkeypatch) as (opened, _reads),
            pytest.raises(StateVaultError, match=match),
        ):
            entry(directory / "model.safetensors.index.json")
        all_opened += opened
    inside = str(directory.resolve())
    assert all(path.startswith(inside + os.sep) for path in all_opened), all_opened
    return all_opened


@pytest.mark.parametrize(
    "shard",
    ["sub/model-00001-of-00002.safetensors", "../outside.safetensors", "/tmp/abs.safetensors"],
    ids=["slash", "dotdot", "absolute"],
)
def test_a_shard_name_that_is_not_a_plain_file_name_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shard: str
) -> None:
    directory = tmp_path / "ckpt"
    weight_map = hf_checkpoint(directory)
    # a valid checkpoint waits where each hostile name points: it must not be read
    (directory / "sub").mkdir()
    for target in (directory / shard.lstrip("/"), tmp_path / "outside.safetensors"):
        target.parent.mkdir(parents=True, exist_ok=True)
        statevault.save({"layer0.weight": torch.zeros(64)}, target)
    write_index(directory, {**weight_map, "layer0.weight": shard})
    refused(directory, monkeypatch, match=r"is not a plain file name in the same directory")


def test_a_shard_listed_but_missing_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "ckpt"
    weight_map = hf_checkpoint(directory)
    write_index(directory, {**weight_map, "extra.weight": "model-00009-of-00009.safetensors"})
    with pytest.raises(CheckpointNotFoundError, match=r"model-00009-of-00009\.safetensors"):
        statevault.load(directory)
    refused(directory, monkeypatch, match=r"model-00009-of-00009\.safetensors")


def test_a_tensor_in_the_index_but_not_in_its_shard_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "ckpt"
    weight_map = hf_checkpoint(directory)
    write_index(directory, {**weight_map, "ghost.weight": weight_map["layer0.weight"]})
    refused(directory, monkeypatch, match=r"ghost\.weight")


def test_a_tensor_in_two_shards_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = tmp_path / "ckpt"
    weight_map = hf_checkpoint(directory)
    # the second shard also holds layer0.weight, which the index places in the first
    second = weight_map["layer1.weight"]
    statevault.save(
        {"layer0.weight": torch.zeros(64), "layer1.weight": torch.ones(64)}, directory / second
    )
    refused(directory, monkeypatch, match=r"layer0\.weight")


def test_a_huge_index_is_refused_before_it_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "ckpt"
    hf_checkpoint(directory)
    index = directory / "model.safetensors.index.json"
    with index.open("r+b") as handle:
        handle.truncate(MAX_INDEX_BYTES + 1)  # sparse: no disk space used
    with (
        recorded(monkeypatch) as (_opened, reads),
        pytest.raises(HeaderError, match="byte limit"),
    ):
        statevault.inspect(index)
    # only the few bytes that tell an index from a tensor file are read
    assert sum(n for path, _, n in reads if path == str(index.resolve())) <= HEAD_BYTES


def test_inspect_of_100_shards_reads_only_the_index_and_the_headers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "ckpt"
    directory.mkdir()
    state = {f"layer{i:03d}.weight": torch.full((4096,), float(i)) for i in range(100)}
    statevault.save(state, directory / "model.safetensors", max_shard_size=20_000)
    shards = sorted(directory.glob("model-*-of-00100.safetensors"))
    assert len(shards) == 100
    header_end = {
        str(shard.resolve()): 8 + struct.unpack("<Q", shard.read_bytes()[:8])[0] for shard in shards
    }
    index = str((directory / "model.safetensors.index.json").resolve())

    with recorded(monkeypatch) as (_opened, reads):
        summary = statevault.inspect(directory)
    assert summary.kind == "sharded"

    read_files = {path for path, _, _ in reads}
    assert read_files == {index, *header_end}, read_files - {index, *header_end}
    beyond = [(p, at, n) for p, at, n in reads if p != index and at + n > header_end[p]]
    assert beyond == []  # not one byte of tensor data
    data_bytes = sum(t.nbytes for t in state.values())
    read_bytes = sum(n for _, _, n in reads)
    assert read_bytes < data_bytes / 10
