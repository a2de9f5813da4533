"""DCP's own format (``FileSystemWriter``: ``.metadata`` + ``.distcp``) read by statevault:
written by the real ``dcp.save`` in this process, then opened, verified, diffed and
converted without torch.distributed, bit for bit. The 2-rank save is in
tests/dcp/test_multiprocess.py."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp
from click.testing import CliRunner
from torch.distributed.checkpoint import FileSystemWriter
from torch.distributed.checkpoint.filesystem import SerializationFormat

import statevault
from statevault.cli import main
from statevault.dcp import Writer
from statevault.fileformat.distcp_metadata import decode

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")


def _state() -> dict[str, Any]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
    optim = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 5)).sum().backward()
    optim.step()
    return {
        "model": model.state_dict(),
        "optim": optim.state_dict(),
        "half": torch.randn(3, 2).to(torch.bfloat16),
        "view": torch.arange(12).reshape(3, 4)[:, 1:3],  # torch.save keeps the whole storage
        "empty": torch.zeros(0, 4),
        "epoch": 7,
    }


def _flat(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    flat = {f"model.{k}": v for k, v in state["model"].items()}
    for param, values in state["optim"]["state"].items():
        flat.update({f"optim.state.{param}.{k}": v for k, v in values.items()})
    flat.update({k: state[k] for k in ("half", "view", "empty")})
    return flat


def _bit_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    same = a.dtype == b.dtype and a.shape == b.shape
    flat_a, flat_b = a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)
    return same and torch.equal(flat_a, flat_b)


@pytest.fixture
def native(tmp_path: Path) -> Path:
    checkpoint = tmp_path / "native"
    dcp.save(_state(), checkpoint_id=checkpoint)
    return checkpoint


def test_reads_every_tensor_bit_exact_and_lists_the_objects(native: Path) -> None:
    assert sorted(os.listdir(native)) == [".metadata", "__0_0.distcp"]
    expected = _flat(_state())
    with statevault.Checkpoint(native) as opened:
        assert opened.kind == "distcp" and not opened.has_checksums
        assert sorted(opened.keys()) == sorted(expected)
        assert opened.signature("half") == ((3, 2), torch.bfloat16)
        read = opened.read()
        objects = json.loads(opened.metadata["dcp.objects"])
    assert all(_bit_equal(read[k], v) for k, v in expected.items())
    assert "epoch" in objects and "optim.param_groups.0.lr" in objects


def test_verify_checks_the_archives_crcs_and_says_there_are_no_checksums(native: Path) -> None:
    report = statevault.verify(native)
    assert report.ok and report.method == "zip CRC-32 of every entry"
    assert report.tensors_checked > len(_flat(_state()))  # several zip entries per piece
    assert "records no checksums of its own" in report.notes[0]
    result = CliRunner().invoke(main, ["verify", str(native)])
    assert result.exit_code == 0 and "no checksums of its own" in " ".join(result.output.split())


def _damage_a_tensor_byte(native: Path, key: str) -> None:
    index = decode((native / ".metadata").read_bytes(), source="test")
    stored = index.items[key].chunks[0].stored  # type: ignore[union-attr]
    data = (native / stored.file).read_bytes()
    payload = data[stored.offset : stored.offset + stored.length]
    value = torch.load(__import__("io").BytesIO(payload), weights_only=True)
    raw = value.contiguous().view(torch.uint8).numpy().tobytes()
    at = stored.offset + payload.index(raw)  # the storage record inside the archive
    with (native / stored.file).open("r+b") as f:
        f.seek(at)
        f.write(bytes([data[at] ^ 0xFF]))


def test_a_damaged_piece_is_found_by_verify_and_refused_by_load(native: Path) -> None:
    _damage_a_tensor_byte(native, "model.0.weight")
    report = statevault.verify(native)
    assert not report.ok and [b.name.split()[0] for b in report.bad] == ["model.0.weight"]
    assert CliRunner().invoke(main, ["verify", str(native)]).exit_code == 1
    with statevault.Checkpoint(native) as opened:
        with pytest.raises(
            statevault.ChecksumMismatchError, match=r"__0_0\.distcp: model\.0\.weight"
        ):
            opened.read(["model.0.weight"])
        unchecked = opened.read(["model.0.weight"], verify=False)["model.0.weight"]
        assert not _bit_equal(unchecked, _state()["model"]["0.weight"])
        assert _bit_equal(
            opened.read(["model.2.weight"])["model.2.weight"], _state()["model"]["2.weight"]
        )


def test_a_truncated_distcp_file_is_named(native: Path) -> None:
    file = native / "__0_0.distcp"
    os.truncate(file, file.stat().st_size - 10)
    with pytest.raises(statevault.CorruptFileError, match=r"__0_0\.distcp: .*truncated"):
        statevault.Checkpoint(native)


def test_inspect_convert_and_diff(native: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["inspect", str(native)])
    assert result.exit_code == 0, result.output
    assert "DCP FileSystemWriter" in result.output and "[3, 2]" in result.output
    out = tmp_path / "one.safetensors"
    result = CliRunner().invoke(main, ["convert", str(native), str(out)])
    assert result.exit_code == 0 and "(distcp)" in result.output, result.output
    loaded = statevault.load(out)
    assert all(_bit_equal(loaded[k], v) for k, v in _flat(_state()).items())
    assert statevault.diff(native, out).ok


def test_the_same_state_saved_by_statevault_dcp_reads_the_same(
    native: Path, tmp_path: Path
) -> None:
    ours = tmp_path / "ours"
    dcp.save(_state(), storage_writer=Writer(ours))
    assert statevault.diff(native, ours).ok


def test_dcps_safetensors_serialisation_is_refused_by_name(tmp_path: Path) -> None:
    writer = FileSystemWriter(tmp_path, serialization_format=SerializationFormat.SAFETENSORS)
    dcp.save({"w": torch.randn(4, 3)}, storage_writer=writer)
    with statevault.Checkpoint(tmp_path) as opened:
        for verify in (True, False):
            with pytest.raises(statevault.CorruptFileError, match="serialization_format=SAFE"):
                opened.read(verify=verify)
