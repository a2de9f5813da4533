"""A statevault DCP directory read without torch.distributed: Checkpoint, inspect, verify,
diff, convert and their CLI commands, on a tensor stored as three chunks in two rank files
(rows, then two column blocks: what a 2-D sharding leaves)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import statevault
from statevault.cli import main
from statevault.fileformat.dcp_index import (
    INDEX_NAME,
    BytesItem,
    Chunk,
    DcpIndex,
    Place,
    TensorItem,
    encode,
    rank_file_name,
)

WHOLE = torch.arange(24, dtype=torch.float32).reshape(6, 4)
BIAS = torch.tensor([1.5, -2.0], dtype=torch.bfloat16)
RANK0, RANK1 = rank_file_name(0, "ab"), rank_file_name(1, "ab")


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    statevault.save({"w@0,0": WHOLE[:3], "bias": BIAS}, ckpt / RANK0)
    statevault.save(
        {
            "w@3,0": WHOLE[3:, :2],
            "w@3,2": WHOLE[3:, 2:],
            "step": torch.tensor([1, 2], dtype=torch.uint8),
        },
        ckpt / RANK1,
    )
    index = DcpIndex(
        items={
            "w": TensorItem(
                "float32",
                (6, 4),
                (
                    Chunk((0, 0), (3, 4), Place(RANK0, "w@0,0")),
                    Chunk((3, 0), (3, 2), Place(RANK1, "w@3,0")),
                    Chunk((3, 2), (3, 2), Place(RANK1, "w@3,2")),
                ),
            ),
            "bias": TensorItem("bfloat16", (2,), (Chunk((0,), (2,), Place(RANK0, "bias")),)),
            "step": BytesItem(Place(RANK1, "step")),
        }
    )
    (ckpt / INDEX_NAME).write_bytes(encode(index))
    return ckpt


def test_full_tensors_reassembled_from_their_chunks(directory: Path) -> None:
    with statevault.Checkpoint(directory) as opened:
        assert opened.kind == "dcp"
        assert opened.keys() == ["w", "bias"]
        assert opened.signature("w") == ((6, 4), torch.float32)
        assert json.loads(opened.metadata["dcp.objects"]) == ["step"]
        read = opened.read()
    assert torch.equal(read["w"], WHOLE) and torch.equal(read["bias"], BIAS)


def test_inspect_shows_global_shapes(directory: Path) -> None:
    summary = statevault.inspect(directory)
    assert {t.name: t.shape for t in summary.tensors} == {"w": (6, 4), "bias": (2,)}
    result = CliRunner().invoke(main, ["inspect", str(directory)])
    assert result.exit_code == 0, result.output
    assert "dcp" in result.output


def test_verify_checks_every_rank_file_and_finds_damage(directory: Path) -> None:
    report = statevault.verify(directory)
    assert report.ok and report.tensors_checked == 5
    assert CliRunner().invoke(main, ["verify", str(directory)]).exit_code == 0
    offset = statevault.Checkpoint(directory / RANK1).tensors["w@3,2"].offset
    assert offset is not None
    with (directory / RANK1).open("r+b") as f:
        f.seek(offset)
        f.write(b"\xff")
    report = statevault.verify(directory)
    assert not report.ok and [bad.name for bad in report.bad] == ["w@3,2"]
    assert CliRunner().invoke(main, ["verify", str(directory)]).exit_code != 0


def test_convert_to_one_file_and_diff(directory: Path, tmp_path: Path) -> None:
    out = tmp_path / "one.safetensors"
    result = CliRunner().invoke(main, ["convert", str(directory), str(out)])
    assert result.exit_code == 0, result.output
    loaded = statevault.load(out)
    assert torch.equal(loaded["w"], WHOLE) and torch.equal(loaded["bias"], BIAS)
    assert statevault.diff(directory, out).ok
