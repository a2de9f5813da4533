"""Format 3 (what save writes) and format 2 refuse damaged metadata; format-2 and format-1
files still load exactly."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy
import pytest
import safetensors.torch
import torch

import statevault
from helpers import fixture_v2, fixture_v3
from helpers.fixture_v1 import expected_state
from statevault.errors import ChecksumMismatchError, HeaderError, StateVaultError
from statevault.fileformat import checksums as _checksum
from statevault.fileformat import metadata
from statevault.fileformat.metadata import LEAD, TREE_KEY

FORMAT1 = Path(__file__).parents[1] / "data" / "format1.safetensors"
FORMAT2 = FORMAT1.parent / "format2.safetensors"
FORMAT3 = FORMAT1.parent / "format3.safetensors"


def same(found: Any, expected: Any) -> bool:
    if type(found) is not type(expected):
        return False
    if isinstance(expected, torch.Tensor):
        return found.dtype == expected.dtype and torch.equal(found, expected)
    if isinstance(expected, (numpy.ndarray, numpy.generic)):
        return found.dtype == expected.dtype and numpy.array_equal(found, expected)
    if isinstance(expected, dict):
        return list(found) == list(expected) and all(same(found[k], expected[k]) for k in found)
    if isinstance(expected, (list, tuple)):
        return len(found) == len(expected) and all(map(same, found, expected))
    return bool(found == expected)


def test_format1_file_loads_exactly(tmp_path: Path) -> None:
    with statevault.Checkpoint(FORMAT1) as checkpoint:
        assert checkpoint.format_version == 1 and checkpoint.has_checksums
        assert checkpoint.metadata["run"] == "v1"
        state = checkpoint.load()
    expected = expected_state()
    assert same(state, expected)
    model = state["model"]
    assert model["head.weight"] is model["embed.weight"]  # the tie survives
    assert statevault.verify(FORMAT1).ok
    # re-saving writes format 3 with the same content
    statevault.save(state, tmp_path / "again.safetensors")
    with statevault.Checkpoint(tmp_path / "again.safetensors") as again:
        assert again.format_version == 3
        assert same(again.load(), expected)


def test_save_writes_the_golden_format3_file_byte_for_byte(tmp_path: Path) -> None:
    # pins the header encoder, layout and per-block digests save uses (helpers.fixture_v3)
    path = tmp_path / "again.safetensors"
    fixture_v3.save(str(path))
    assert path.read_bytes() == FORMAT3.read_bytes()


def test_save_records_the_default_block_size(tmp_path: Path) -> None:
    path = tmp_path / "default.safetensors"
    statevault.save({"w": torch.ones(3)}, path)
    with statevault.Checkpoint(path) as checkpoint:
        assert checkpoint.format_version == 3
        assert checkpoint.vault.block_bytes == metadata.BLOCK_BYTES == 8 << 20


def test_golden_format3_file_loads_exactly_and_each_block_has_its_digest() -> None:
    with statevault.Checkpoint(FORMAT3) as checkpoint:
        assert checkpoint.format_version == 3 and checkpoint.vault.block_bytes == 64
        assert dict(checkpoint.metadata) == {"format": "pt", **fixture_v3.METADATA}
        digests = checkpoint.vault.checksums
        four, short = fixture_v3.expected_state()["blocks"].values()
        raw = four.numpy().tobytes()
        assert digests["blocks.four"] == "".join(
            _checksum.digest(raw[at : at + 64]) for at in range(0, 256, 64)
        )
        raw = short.numpy().tobytes()
        assert digests["blocks.short_last"] == _checksum.digest(raw[:64]) + _checksum.digest(
            raw[64:]
        )
        assert digests["model.empty"] == _checksum.digest(b"")
        state = checkpoint.load()
    assert same(state, fixture_v3.expected_state())
    assert statevault.verify(FORMAT3).ok


def test_a_damaged_block_is_named_by_load_and_verify(tmp_path: Path) -> None:
    data = bytearray(FORMAT3.read_bytes())
    with statevault.Checkpoint(FORMAT3) as checkpoint:
        offset = checkpoint.tensors["blocks.four"].offset
    data[offset + 2 * 64 + 5] ^= 0xFF  # a byte of the third block
    path = tmp_path / "damaged.safetensors"
    path.write_bytes(data)
    with pytest.raises(
        ChecksumMismatchError, match=r"'blocks.four' is damaged in block 2 \(bytes 128-191\)"
    ):
        statevault.load(path)
    report = statevault.verify(path)
    assert [bad.name for bad in report.bad] == ["blocks.four"]


def test_golden_format2_file_loads_exactly() -> None:
    with statevault.Checkpoint(FORMAT2) as checkpoint:
        assert checkpoint.format_version == 2 and checkpoint.has_checksums
        assert dict(checkpoint.metadata) == {"format": "pt", **fixture_v2.METADATA}
        assert dict(checkpoint.aliases) == {"model.head.weight": "model.embed.weight"}
        state = checkpoint.load()
    assert same(state, fixture_v2.expected_state())
    model = state["model"]
    assert model["head.weight"] is model["embed.weight"]  # the tie survives
    assert type(state["rng"]["gauss"]) is numpy.float64
    assert statevault.verify(FORMAT2).ok
    # the reference reader sees the stored tensors (complex128 as float64 pairs)
    flat = safetensors.torch.load_file(str(FORMAT2))
    assert torch.equal(flat["model.rotor"], torch.view_as_real(model["rotor"]))
    assert "model.head.weight" not in flat


def test_damaged_format1_header_is_refused(tmp_path: Path) -> None:
    data = FORMAT1.read_bytes()
    at = data.index(b"param_groups")  # inside the tree, which format 1's digest covers
    path = tmp_path / "damaged.safetensors"
    path.write_bytes(data[:at] + b"P" + data[at + 1 :])
    with pytest.raises(HeaderError, match="header checksum mismatch"):
        statevault.load(path)


F32x2 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
DATA8 = struct.pack("<2f", 1.0, 2.0)
GOOD_DIGEST = _checksum.digest(DATA8)


def format2_file(
    members: str = '"aliases":{},"dtypes":{}',
    *,
    checksums: str | None = None,
    tree: str | None = '{"tensor":"a"}',
    version: object = 2,
    first: bool = True,
) -> bytes:
    """A format-2 file holding tensor ``a`` whose metadata members are given as JSON text,
    carrying a correct header digest: the digest is no secret, a hostile file can carry it."""
    checksums = (
        f'"checksums":{{"algorithm":"xxh3-64","packed":"{GOOD_DIGEST}"}}'
        if checksums is None
        else checksums
    )
    parts = [f'"version":{json.dumps(version)}', members, checksums]
    vault_tail = "," + ",".join(p for p in parts if p) + "}"

    def build(digest: str) -> bytes:
        vault = json.dumps('{"header_digest":"' + digest + '"' + vault_tail)
        extra = f',"{TREE_KEY}":{json.dumps(tree)}' if tree is not None else ""
        if first:
            metadata = f'{{"statevault":{vault}{extra},"format":"pt"}}'
        else:
            metadata = f'{{"format":"pt","statevault":{vault}{extra}}}'
        body = f'{{"__metadata__":{metadata},"a":{json.dumps(F32x2)}}}'.encode()
        body += b" " * (-len(body) % 8)
        return struct.pack("<Q", len(body)) + body

    header = build(_checksum.PLACEHOLDER)
    return build(_checksum.digest(header)) + DATA8


def test_the_test_writer_makes_a_file_that_loads(tmp_path: Path) -> None:
    path = tmp_path / "ok.safetensors"
    path.write_bytes(format2_file())
    assert path.read_bytes()[8:].startswith(LEAD)
    assert torch.equal(statevault.load(path), torch.tensor([1.0, 2.0]))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (format2_file(version=4), "newer statevault"),
        (format2_file(version=3), "block size None"),
        (format2_file(version=True), "no valid format version"),
        (format2_file(first=False), "does not begin with its header digest"),
        (format2_file(checksums='"checksums":"x"'), "checksums entry is damaged"),
        (format2_file(checksums='"checksums":{"packed":"' + GOOD_DIGEST + '"}'), "checksums"),
        (format2_file(checksums='"checksums":{"algorithm":"xxh3-64","packed":"abc"}'), "checksums"),
        (
            format2_file(
                checksums='"checksums":{"algorithm":"xxh3-64","packed":"'
                + GOOD_DIGEST.upper()
                + '"}'
            ),
            "checksums",
        ),
        (
            format2_file(checksums='"checksums":{"algorithm":"md5","packed":"' + GOOD_DIGEST + '"}'),
            "checksums",
        ),
        (format2_file('"aliases":["a"],"dtypes":{}'), "alias table is damaged"),
        (format2_file('"aliases":{"b":"missing"},"dtypes":{}'), "does not resolve"),
        (format2_file('"aliases":{},"dtypes":{"a":"complex128"}'), "does not fit"),
        (format2_file(tree="{not json"), "tree is not valid JSON"),
        (format2_file(tree="[" * 100_000 + "]" * 100_000), "nested too deeply"),
        (format2_file(tree='{"tensor":"missing"}'), "unknown tensor"),
    ],
    ids=[
        "newer", "format3-without-block", "bool-version", "digest-not-first", "checksums-not-object",
        "no-algorithm", "short-packed", "uppercase-packed", "other-algorithm", "aliases-list",
        "alias-dangles", "dtype-misfits", "tree-not-json", "tree-too-deep", "tree-unknown-tensor",
    ],
)  # fmt: skip
def test_hostile_format2_metadata_is_refused(content: bytes, message: str, tmp_path: Path) -> None:
    path = tmp_path / "hostile.safetensors"
    path.write_bytes(content)
    with pytest.raises(StateVaultError, match=message) as info:
        statevault.load(path)
    assert str(path) in str(info.value)


def test_wrong_packed_digest_names_the_damaged_tensor(tmp_path: Path) -> None:
    path = tmp_path / "digest.safetensors"
    wrong = '"checksums":{"algorithm":"xxh3-64","packed":"' + "0" * 16 + '"}'
    path.write_bytes(format2_file(checksums=wrong))
    with pytest.raises(ChecksumMismatchError, match="tensor 'a' is damaged"):
        statevault.load(path)
    assert torch.equal(statevault.load(path, verify=False), torch.tensor([1.0, 2.0]))


def test_any_header_byte_changed_after_saving_is_caught(tmp_path: Path) -> None:
    path = tmp_path / "saved.safetensors"
    statevault.save({"w": torch.ones(2), "step": 3}, path, metadata={"run": "r"})
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    damaged = tmp_path / "damaged.safetensors"
    for position in range(8, 8 + length):
        changed = bytearray(data)
        changed[position] = ord(" ") if data[position] != ord(" ") else ord("\t")
        damaged.write_bytes(bytes(changed))
        with pytest.raises(StateVaultError):  # whitespace too: the digest covers raw bytes
            statevault.load(damaged)


def test_format1_user_key_that_format2_reserves_still_loads() -> None:
    # format 1 reserved only "statevault": "statevault.tree" was an ordinary user key there.
    # Written at commit 1b3b556 by save({"w": torch.arange(3.0)}, path, metadata=...).
    path = FORMAT1.parent / "format1_user_keys.safetensors"
    with statevault.Checkpoint(path) as checkpoint:
        assert checkpoint.format_version == 1
        assert dict(checkpoint.metadata) == {"format": "pt", "statevault.tree": "mine", "run": "r"}
        assert torch.equal(checkpoint.load()["w"], torch.arange(3.0))


def test_plain_safetensors_file_keeps_every_user_key(tmp_path: Path) -> None:
    path = tmp_path / "plain.safetensors"
    metadata = {"statevault.tree": "mine", "k": "v"}
    safetensors.torch.save_file({"w": torch.ones(2)}, str(path), metadata=metadata)
    with statevault.Checkpoint(path) as checkpoint:
        assert checkpoint.format_version is None
        assert dict(checkpoint.metadata) == metadata


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            format2_file(checksums='"checksums":{"algorithm":"xxh3-64","packed":"abc"}'),
            "statevault checksums entry is damaged: 3 characters of digests for 1 tensors "
            "(expected 16: 16 each); header damaged",
        ),
        (
            format2_file(
                checksums='"checksums":{"algorithm":"md5","packed":"' + GOOD_DIGEST + '"}'
            ),
            "statevault checksums entry is damaged: algorithm 'md5' (expected 'xxh3-64') or no "
            "digests; header damaged",
        ),
        (
            format2_file(
                checksums='"checksums":{"algorithm":"xxh3-64","packed":"'
                + GOOD_DIGEST.upper()
                + '"}'
            ),
            "statevault checksums entry is damaged: digests that are not lower-case hex; header "
            "damaged",
        ),
        (
            format2_file('"aliases":{},"dtypes":{"a":"complex128"}'),
            "tensor 'a' is recorded as dtype 'complex128', which does not fit its stored code "
            "F32; header damaged or written by a newer statevault",
        ),
        (
            format2_file('"aliases":{},"dtypes":{"b":"complex128"}'),
            "tensor 'b' is recorded as dtype 'complex128', which does not fit a tensor the file "
            "does not hold; header damaged or written by a newer statevault",
        ),
        (
            format2_file('"aliases":{"b":"missing"},"dtypes":{}'),
            "alias 'b' -> 'missing' does not resolve; header damaged",
        ),
        (
            format2_file(tree='{"dict":[["x",{"list":[1,{"tensor":"missing"}]}]]}'),
            "statevault tree in header is damaged at node x.1: refers to unknown tensor "
            "'missing', which the file does not hold",
        ),
    ],
    ids=["packed-length", "algorithm", "uppercase", "dtype-code", "dtype-name", "alias", "tree"],
)
def test_metadata_refusals_name_the_file_the_tensor_and_the_counts(
    content: bytes, message: str, tmp_path: Path
) -> None:
    path = tmp_path / "hostile.safetensors"
    path.write_bytes(content)
    with pytest.raises(HeaderError) as info:
        statevault.load(path)
    assert str(info.value) == f"{path}: {message}"
