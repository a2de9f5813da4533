"""Damaged or hostile files raise statevault's own errors and nothing else, never a wrong load."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import statevault
from statevault.errors import (
    ChecksumMismatchError,
    CorruptFileError,
    HeaderError,
    NotACheckpointError,
    StateVaultError,
    TruncatedFileError,
)
from statevault.fileformat.checksums import canonical_json, digest
from statevault.fileformat.format1 import header_digest
from statevault.fileformat.table import TensorEntry

FUZZ = settings(
    max_examples=120,
    deadline=None,
    database=None,  # keep hypothesis from writing .hypothesis/ into the working directory
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def sample_state() -> dict[str, Any]:
    generator = torch.Generator().manual_seed(0)
    embed = torch.randn(5, 3, generator=generator)
    return {
        "model": {"embed.weight": embed, "decoder.weight": embed, "bias": torch.zeros(3)},
        "optim": {
            "state": {
                0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(4, generator=generator)}
            },
            "param_groups": [{"lr": 0.1, "betas": (0.9, 0.99), "params": [0]}],
        },
        "c128": torch.complex(
            torch.ones(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
        ),
        "mask": torch.tensor([True, False, True]),
        "ids": torch.arange(6, dtype=torch.int64),
        "scalar": torch.tensor(2.5, dtype=torch.bfloat16),
        "epoch": 4,
        "loss": float("nan"),
    }


def equal(found: Any, expected: Any) -> bool:
    if type(found) is not type(expected):
        return False
    if isinstance(expected, torch.Tensor):
        return (
            found.dtype == expected.dtype
            and found.shape == expected.shape
            and found.view(torch.uint8).numpy().tobytes()
            == expected.contiguous().view(torch.uint8).numpy().tobytes()
            if expected.dim() > 0
            else found.reshape(1).view(torch.uint8).numpy().tobytes()
            == expected.reshape(1).view(torch.uint8).numpy().tobytes()
        )
    if isinstance(expected, dict):
        return list(found) == list(expected) and all(equal(found[k], expected[k]) for k in expected)
    if isinstance(expected, (list, tuple)):
        return len(found) == len(expected) and all(map(equal, found, expected))
    if isinstance(expected, float) and expected != expected:
        return bool(found != found)
    return bool(found == expected)


class Original:
    """A valid file's bytes plus facts needed to judge damage to it."""

    def __init__(self, directory: Path) -> None:
        self.state = sample_state()
        path = directory / "original.safetensors"
        for extra in range(8):  # make sure the header has JSON-ignored padding to fuzz
            statevault.save(self.state, path, metadata={"note": "x" * extra})
            self.data = path.read_bytes()
            (self.header_len,) = struct.unpack("<Q", self.data[:8])
            if self.header_len % 8 == 0 and self.data[8 + self.header_len - 4] == ord(" "):
                break
        self.data_start = 8 + self.header_len
        header = json.loads(self.data[8 : self.data_start])
        del header["__metadata__"]
        self.ranges = {
            name: (self.data_start + e["data_offsets"][0], self.data_start + e["data_offsets"][1])
            for name, e in header.items()
        }
        body = self.data[8 : self.data_start]
        self.padding_start = 8 + len(body.rstrip(b" "))

    def tensor_at(self, position: int) -> str | None:
        for name, (start, end) in self.ranges.items():
            if start <= position < end:
                return name
        return None


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> Original:
    return Original(tmp_path_factory.mktemp("original"))


def load_bytes(data: bytes, path: Path, **options: Any) -> Any:
    path.write_bytes(data)
    return statevault.load(path, **options)


def test_original_is_sane(original: Original, tmp_path: Path) -> None:
    assert equal(load_bytes(original.data, tmp_path / "f"), original.state)
    assert original.padding_start < original.data_start  # there is padding to fuzz
    assert set(original.ranges) >= {"model.embed.weight", "c128", "ids"}


def test_every_truncation_raises(original: Original, tmp_path: Path) -> None:
    path = tmp_path / "cut.safetensors"
    for length in range(len(original.data)):
        with pytest.raises(CorruptFileError) as info:
            load_bytes(original.data[:length], path)
        assert str(path) in str(info.value), length
        if length >= original.data_start:
            assert isinstance(info.value, TruncatedFileError), length


@FUZZ
@given(position=st.data(), bit=st.integers(0, 7))
def test_any_single_bit_flip_is_caught(
    original: Original, tmp_path: Path, position: st.DataObject, bit: int
) -> None:
    index = position.draw(st.integers(0, len(original.data) - 1), label="byte")
    damaged = bytearray(original.data)
    damaged[index] ^= 1 << bit
    path = tmp_path / "flip.safetensors"
    try:
        result = load_bytes(bytes(damaged), path)
    except StateVaultError as exc:
        assert str(path) in str(exc)
        tensor = original.tensor_at(index)
        if tensor is not None:
            assert isinstance(exc, ChecksumMismatchError)
            assert repr(tensor) in str(exc)
        return
    assert original.padding_start <= index < original.data_start, index
    assert equal(result, original.state)


def test_every_bit_flip_in_the_header_prefix_and_padding(
    original: Original, tmp_path: Path
) -> None:
    path = tmp_path / "flip.safetensors"
    positions = [*range(8), *range(original.padding_start - 4, original.data_start + 4)]
    for index in positions:
        for bit in range(8):
            damaged = bytearray(original.data)
            damaged[index] ^= 1 << bit
            try:
                result = load_bytes(bytes(damaged), path)
            except StateVaultError:
                continue
            assert original.padding_start <= index < original.data_start, (index, bit)
            assert equal(result, original.state)


@pytest.mark.parametrize(
    "tensor", ["model.embed.weight", "c128", "ids", "mask", "optim.state.0.step"]
)
def test_data_flip_names_the_tensor_and_verify_false_reads_it(
    original: Original, tmp_path: Path, tensor: str
) -> None:
    start, end = original.ranges[tensor]
    damaged = bytearray(original.data)
    damaged[(start + end) // 2] ^= 0x01
    path = tmp_path / "d.safetensors"
    with pytest.raises(ChecksumMismatchError, match=f"tensor '{tensor}' is damaged") as info:
        load_bytes(bytes(damaged), path)
    assert "expected xxh3-64" in str(info.value) and "found" in str(info.value)
    statevault.load(path, verify=False)  # the opt-out reads the damaged bytes anyway


@FUZZ
@given(data=st.data())
def test_overwritten_byte_ranges_are_caught(
    original: Original, tmp_path: Path, data: st.DataObject
) -> None:
    start = data.draw(st.integers(0, len(original.data) - 1), label="start")
    junk = data.draw(st.binary(min_size=1, max_size=64), label="junk")
    damaged = bytearray(original.data)
    damaged[start : start + len(junk)] = junk[: len(original.data) - start]
    if bytes(damaged) == original.data:
        return
    try:
        result = load_bytes(bytes(damaged), tmp_path / "o.safetensors")
    except StateVaultError:
        return
    changed = [i for i in range(len(damaged)) if damaged[i] != original.data[i]]
    assert all(original.padding_start <= i < original.data_start for i in changed), changed
    assert equal(result, original.state)


@FUZZ
@given(junk=st.binary(max_size=300))
@example(junk=b"")
@example(junk=struct.pack("<Q", 2))
@example(junk=struct.pack("<Q", 2) + b"{}")
@example(junk=struct.pack("<Q", 2) + b"[]")
def test_random_files_are_refused(junk: bytes, tmp_path: Path) -> None:
    try:
        result = load_bytes(junk, tmp_path / "junk.safetensors")
    except StateVaultError:
        return
    assert result == {}  # only an empty table is a valid file of tiny random bytes


# -- hand-written hostile files ----------------------------------------------------------------


def file_with_header(
    header: bytes | str | object, data: bytes = b"", length: int | None = None
) -> bytes:
    if not isinstance(header, (bytes, str)):
        header = json.dumps(header)
    if isinstance(header, str):
        header = header.encode()
    return struct.pack("<Q", len(header) if length is None else length) + header + data


F32x2 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
DATA8 = struct.pack("<2f", 1.0, 2.0)


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (file_with_header(b"{}", length=2**63), HeaderError),
        (file_with_header(b"{}", length=2**64 - 1), HeaderError),
        (file_with_header(b"{}", length=100_000_001), HeaderError),
        (file_with_header(b"{}", length=1000), TruncatedFileError),
        (file_with_header(b"not json at all"), HeaderError),
        (file_with_header([1, 2, 3]), HeaderError),
        (file_with_header(b"\xc3\x28{}"), HeaderError),
        (
            file_with_header(
                '{"t":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
                '"t":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}',
                b"ab",
            ),
            HeaderError,
        ),
        (file_with_header({"a": F32x2, "b": dict(F32x2, data_offsets=[4, 12])}, DATA8 + b"1234"), HeaderError),
        (file_with_header({"a": F32x2, "b": dict(F32x2, data_offsets=[12, 20])}, DATA8 * 3), HeaderError),
        (file_with_header({"a": dict(F32x2, data_offsets=[0, 8])}, b"1234"), TruncatedFileError),
        (file_with_header({"a": dict(F32x2, data_offsets=[2**64, 2**64 + 8])}, DATA8), HeaderError),
        (file_with_header({"a": dict(F32x2, shape=[3])}, DATA8), HeaderError),
        (file_with_header({"a": dict(F32x2, shape=[-2])}, DATA8), HeaderError),
        (file_with_header({"a": dict(F32x2, shape=[True, 2])}, DATA8), HeaderError),
        (file_with_header({"a": dict(F32x2, shape=[2.0])}, DATA8), HeaderError),
        (file_with_header({"a": dict(F32x2, dtype="F33")}, DATA8), HeaderError),
        (file_with_header({"a": dict(F32x2, dtype="F4")}, DATA8), HeaderError),
        (file_with_header({"a": F32x2}, DATA8 + b"extra"), HeaderError),
        (file_with_header("[" * 50_000 + "]" * 50_000), HeaderError),
        (file_with_header('{"a":' * 50_000 + "1" + "}" * 50_000), HeaderError),
        (file_with_header({"__metadata__": {"x": 1}}), HeaderError),
        (file_with_header({"__metadata__": "x"}), HeaderError),
        (file_with_header({"e": {"dtype": "F32", "shape": [0, 2**64], "data_offsets": [0, 0]}}), HeaderError),
        (file_with_header({"e": {"dtype": "F32", "shape": [0, 2**62, 2**62], "data_offsets": [0, 0]}}), HeaderError),
        (b"", NotACheckpointError),  # empty: nothing of a checkpoint in it (CLI exit 2)
        (b"\x00" * 7, TruncatedFileError),
    ],
    ids=[
        "length-2^63", "length-max", "length-over-cap", "length-beyond-file", "non-json",
        "json-array", "bad-utf8", "duplicate-names", "overlap", "gap", "out-of-bounds",
        "offset-overflow", "dtype-x-shape", "negative-shape", "bool-shape", "float-shape",
        "unknown-dtype", "f4-dtype", "trailing-bytes", "deep-array", "deep-object",
        "metadata-not-str", "metadata-not-object", "empty-huge-dim", "empty-stride-overflow",
        "empty-file", "seven-bytes",
    ],
)  # fmt: skip
def test_hostile_files_are_refused(content: bytes, error: type[Exception], tmp_path: Path) -> None:
    path = tmp_path / "hostile.safetensors"
    path.write_bytes(content)
    with pytest.raises(error) as info:
        statevault.load(path)
    assert str(path) in str(info.value)


def vault_file(vault: object, tensors: dict[str, Any] | None = None, data: bytes = b"") -> bytes:
    """A file whose statevault metadata is ``vault``, with a correct header digest when
    ``vault`` is a dict without one: the digest is no secret, a hostile file can carry it."""
    tensors = tensors or {}
    if isinstance(vault, dict) and "header_digest" not in vault:
        entries = [
            TensorEntry(n, e["dtype"], tuple(e["shape"]), *e["data_offsets"])
            for n, e in tensors.items()
        ]
        vault = dict(vault, header_digest=header_digest(entries, {}, vault))
    text = vault if isinstance(vault, str) else canonical_json(vault)
    table: dict[str, Any] = {"__metadata__": {"statevault": text}, **tensors}
    return file_with_header(table, data)


def base_vault(**changes: Any) -> dict[str, Any]:
    vault: dict[str, Any] = {"version": 1, "aliases": {}, "dtypes": {}, "tree": {"tensor": "a"}}
    vault.update(changes)
    return vault


ONE = {"a": F32x2}


@pytest.mark.parametrize(
    "content",
    [
        vault_file("{not json"),
        vault_file("[1]"),
        vault_file("[" * 50_000 + "]" * 50_000),
        vault_file(base_vault(version=None), ONE, DATA8),
        vault_file(base_vault(version="1"), ONE, DATA8),
        vault_file(base_vault(version=0), ONE, DATA8),
        vault_file(base_vault(version=999), ONE, DATA8),
        vault_file(base_vault(tree={"tensor": "missing"}), ONE, DATA8),
        vault_file(base_vault(tree={"list": [{"tensor": "a"}, {"bogus": 1}]}), ONE, DATA8),
        vault_file(base_vault(tree={"list": "x"}), ONE, DATA8),
        vault_file(base_vault(tree=[1]), ONE, DATA8),
        vault_file(base_vault(aliases={"b": "missing"}), ONE, DATA8),
        vault_file(base_vault(aliases={"a": "a"}), ONE, DATA8),
        vault_file(base_vault(aliases={"b": ["a"]}), ONE, DATA8),
        vault_file(base_vault(aliases=["a"]), ONE, DATA8),
        vault_file(base_vault(aliases="a"), ONE, DATA8),
        vault_file(base_vault(dtypes={"a": "complex128"}), ONE, DATA8),
        vault_file(base_vault(dtypes={"a": "quint8"}), ONE, DATA8),
        vault_file(base_vault(dtypes={"a": 5}), ONE, DATA8),
        vault_file(base_vault(dtypes={"a": ["float32"]}), ONE, DATA8),
        vault_file(base_vault(dtypes=["a"]), ONE, DATA8),
        vault_file(base_vault(dtypes={"missing": "float32"}), ONE, DATA8),
        vault_file(
            base_vault(dtypes={"a": "complex128"}),
            {"a": {"dtype": "F64", "shape": [], "data_offsets": [0, 8]}},
            DATA8,
        ),
        vault_file(
            base_vault(dtypes={"a": "complex128"}),
            {"a": {"dtype": "F64", "shape": [3], "data_offsets": [0, 24]}},
            DATA8 * 3,
        ),
        vault_file(base_vault(checksums="x"), ONE, DATA8),
        vault_file(base_vault(checksums=["x"]), ONE, DATA8),
        vault_file(base_vault(checksums={"digests": ["x"]}), ONE, DATA8),
        vault_file(base_vault(checksums={"digests": "x"}), ONE, DATA8),
        vault_file(base_vault(checksums={"digests": {"a": 5}}), ONE, DATA8),
        vault_file(base_vault(checksums={"digests": {"b": "0" * 16}}), ONE, DATA8),
        vault_file(base_vault(checksums={"digests": {"a": "0" * 16}}), ONE, DATA8),
        vault_file(base_vault(tree={"list": []}), ONE, DATA8),
    ],
)
def test_hostile_statevault_metadata_is_refused(content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "vault.safetensors"
    path.write_bytes(content)
    try:
        result = statevault.load(path)
    except StateVaultError as exc:
        assert str(path) in str(exc)
        # the digest is valid, so the refusal must come from the check under test
        assert "header digest" not in str(exc) and "header checksum" not in str(exc)
        return
    # the one legal case above: a tree of an empty list, which is simply what it says
    assert result == []


@pytest.mark.parametrize("depth", [300, 450, 490, 5_000])
def test_deeply_nested_tree_is_refused_not_crashed(depth: int, tmp_path: Path) -> None:
    # near and beyond what JSON parsing and recursive rebuilding can take
    tree = '{"list":[' * depth + '{"tensor":"a"}' + "]}" * depth
    body = '{"aliases":{},"dtypes":{},"tree":' + tree + ',"version":1}'
    # the canonical document header_digest() hashes, spelled out since json.dumps would recurse
    document = '{"metadata":{},"statevault":' + body + ',"tensors":' + canonical_json(ONE) + "}"
    vault = body[:-1] + f',"header_digest":"{digest(document.encode())}"}}'
    path = tmp_path / "deep.safetensors"
    path.write_bytes(vault_file(vault, ONE, DATA8))
    try:
        result = statevault.load(path)
    except StateVaultError as exc:
        message = str(exc)
        assert message.startswith(str(path))
        assert "deep" in message.removeprefix(str(path)) or "depth" in message
        return
    for _ in range(depth):
        result = result[0]
    assert torch.equal(result, torch.tensor([1.0, 2.0]))


@pytest.mark.parametrize(
    ("vault", "message"),
    [
        (dict(base_vault(), header_digest="0" * 16), "header checksum mismatch"),
        (dict(base_vault(), header_digest=7), "lacks its header digest"),
        (dict(base_vault(), header_digest=None), "lacks its header digest"),
    ],
)
def test_header_digest_is_required_and_checked(vault: Any, message: str, tmp_path: Path) -> None:
    path = tmp_path / "digest.safetensors"
    path.write_bytes(vault_file(vault, ONE, DATA8))
    with pytest.raises(HeaderError, match=message):
        statevault.load(path)


def test_damaged_statevault_key_is_not_mistaken_for_a_plain_file(tmp_path: Path) -> None:
    path = tmp_path / "key.safetensors"
    statevault.save({"a": {"b": torch.ones(2)}}, path)
    data = path.read_bytes()
    assert data.count(b'"statevault"') == 1
    path.write_bytes(data.replace(b'"statevault"', b'"statevaulu"'))
    with pytest.raises(HeaderError, match="'statevaulu' holds statevault metadata"):
        statevault.load(path)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(statevault.CheckpointNotFoundError, match="no such checkpoint"):
        statevault.load(tmp_path / "nope.safetensors")
    with pytest.raises(statevault.CheckpointNotFoundError, match="directory"):
        statevault.load(tmp_path)
