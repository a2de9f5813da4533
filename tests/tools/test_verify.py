"""verify(): every checksum and the header checked, every damaged tensor named."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import statevault
from helpers.samples import flip_byte, training_state, write_sharded


class CountingProgress:
    def __init__(self) -> None:
        self.total: int | None = None
        self.done = 0

    def start(self, total: int) -> None:
        self.total = total

    def advance(self, nbytes: int) -> None:
        self.done += nbytes


def _saved(tmp_path: Path) -> Path:
    path = tmp_path / "ckpt.safetensors"
    statevault.save(training_state(), path)
    return path


def test_intact_file_is_ok_and_every_byte_hashed(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    progress = CountingProgress()
    report = statevault.verify(path, progress=progress)
    with statevault.Checkpoint(path) as ckpt:
        stored = sum(info.nbytes for info in ckpt.tensors.values())
        count = len(ckpt.tensors)
    assert report.ok and report.checksummed and report.header_digest
    assert (report.tensors_checked, report.bytes_checked) == (count, stored)
    assert progress.total == progress.done == stored
    assert "OK (checksums)" in str(report)


def test_every_damaged_tensor_is_named_not_just_the_first(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    with statevault.Checkpoint(path) as ckpt:
        victims = ["model.block.0.weight", "dtypes.float8_e4m3fn", "optim.state.0.exp_avg"]
        for name in victims:
            flip_byte(path, ckpt.tensors[name].offset + ckpt.tensors[name].nbytes - 1)
        order = list(ckpt.tensors)
    report = statevault.verify(path)
    assert not report.ok and report.header_error is None
    assert [b.name for b in report.bad] == sorted(victims, key=order.index)
    assert all(b.expected != b.found for b in report.bad)
    text = str(report)
    assert all(name in text for name in victims) and "DAMAGED: 3 of" in text
    assert json.loads(json.dumps(report.to_dict()))["bad"][0]["name"] == report.bad[0].name


def test_files_without_checksums_get_a_structure_check_and_say_so(tmp_path: Path) -> None:
    ours = tmp_path / "nock.safetensors"
    statevault.save({"w": torch.ones(3)}, ours, checksum=False)
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.ones(3)}, str(plain))
    for path in (ours, plain):
        report = statevault.verify(path)
        assert report.ok and not report.checksummed and report.bytes_checked == 0
        assert "only the structure was checked" in str(report)


def test_damaged_header_is_a_finding(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.safetensors"
    statevault.save({"weight": torch.ones(3)}, path)
    raw = path.read_bytes()
    path.write_bytes(raw.replace(b'"weight"', b'"weighT"', 1))  # a renamed tensor
    report = statevault.verify(path)
    assert not report.ok and "header checksum mismatch" in str(report.header_error)


def test_truncated_file_is_a_finding(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    path.write_bytes(path.read_bytes()[:-10])
    report = statevault.verify(path)
    assert not report.ok and "truncated" in str(report.header_error)


def test_sharded_directory_of_plain_shards_is_structure_checked(tmp_path: Path) -> None:
    tensors = {f"w{i}": torch.arange(10.0) + i for i in range(4)}
    report = statevault.verify(write_sharded(tmp_path / "hf", tensors))
    assert report.ok and not report.checksummed  # safetensors shards carry no checksums
    assert report.tensors_checked == 4


def test_sharded_directory_names_damaged_tensor_and_its_shard(tmp_path: Path) -> None:
    directory = tmp_path / "hf"
    directory.mkdir()
    weight_map = {}
    for i in range(2):
        shard = directory / f"model-{i + 1:05d}-of-00002.safetensors"
        statevault.save({f"w{i}": torch.arange(10.0) + i}, shard)
        weight_map[f"w{i}"] = shard.name
    index = {"metadata": {}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    second = directory / weight_map["w1"]
    flip_byte(second, second.stat().st_size - 1)
    report = statevault.verify(directory)
    assert not report.ok and report.checksummed
    assert [(b.name, Path(b.file).name) for b in report.bad] == [("w1", second.name)]


@pytest.mark.parametrize(
    ("name", "save_options", "method"),
    [
        ("zip.pt", {}, "zip CRC-32 of every entry"),
        ("model.bin", {}, "zip CRC-32 of every entry"),  # the suffix does not decide
        ("legacy.pt", {"_use_new_zipfile_serialization": False}, "nothing to check"),
    ],
)
def test_a_healthy_torch_file_is_ok_not_corrupt(
    tmp_path: Path, name: str, save_options: dict[str, bool], method: str
) -> None:
    path = tmp_path / name
    torch.save(nn.Linear(3, 2).state_dict(), path, **save_options)  # type: ignore[arg-type]
    report = statevault.verify(path)
    assert report.ok and report.header_error is None and report.bad == ()
    assert report.method == method and "DAMAGED" not in str(report)
    assert str(report).startswith(f"{path}: OK")


def test_a_healthy_torch_zip_that_needs_a_full_unpickler_is_still_ok(tmp_path: Path) -> None:
    """Its CRC-32s are checked without unpickling it: the arguments object is no damage."""
    path = tmp_path / "trainer.pt"
    torch.save({"w": torch.ones(4), "args": argparse.Namespace(lr=0.1)}, path)
    report = statevault.verify(path)
    assert report.ok and report.tensors_checked > 0


def test_a_legacy_torch_file_the_safe_loader_refuses_is_not_called_corrupt(
    tmp_path: Path,
) -> None:
    path = tmp_path / "legacy_args.pt"
    state = {"w": torch.ones(4), "args": argparse.Namespace(lr=0.1)}
    torch.save(state, path, _use_new_zipfile_serialization=False)
    with pytest.raises(statevault.UnsupportedObjectError) as caught:
        statevault.verify(path)
    assert not isinstance(caught.value, statevault.CorruptFileError)
    assert "arbitrary code" in str(caught.value)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"threads": 0}, "threads must be None or an int >= 1"),
        ({"threads": "4"}, "threads must be None or an int >= 1"),
        ({"threads": True}, "threads must be None or an int >= 1"),
    ],
)
def test_bad_thread_counts_are_invalid_argument_errors(
    tmp_path: Path, options: dict[str, object], message: str
) -> None:
    with pytest.raises(statevault.InvalidArgumentError, match=message):
        statevault.verify(_saved(tmp_path), **options)  # type: ignore[arg-type]


def test_a_source_of_the_wrong_type_is_an_invalid_argument_error() -> None:
    for tool in (statevault.verify, statevault.inspect):
        with pytest.raises(statevault.InvalidArgumentError, match="source must be a path"):
            tool(123)  # type: ignore[arg-type]
