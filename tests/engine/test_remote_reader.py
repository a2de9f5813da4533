"""The engine's reader on a remote object (fsspec's memory:// store, no server): the header
in one request, whole blocks per request on several threads, every block verified, and the
descriptor-based paths (verify's scans, slices, device staging) reading through the object."""

from __future__ import annotations

import threading

import pytest
import torch

import statevault
from statevault.engine import tuning
from statevault.engine.fsspec_storage import FsspecObject, FsspecStorage
from statevault.engine.reader import FileReader
from statevault.engine.scan import hash_rows
from statevault.errors import ChecksumMismatchError, StateVaultError
from statevault.fileformat import metadata
from statevault.fileformat.metadata import VaultInfo, decode, signed_digest

URL = "memory://statevault-engine-tests/model.safetensors"


@pytest.fixture
def requests(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, str]]:
    """(offset, size, thread name) of every read of a memory:// object, in order."""
    seen: list[tuple[int, int, str]] = []
    real = FsspecObject.read

    def counting(self: FsspecObject, nbytes: int, offset: int) -> bytes:
        data = real(self, nbytes, offset)
        seen.append((offset, len(data), threading.current_thread().name))
        return data

    monkeypatch.setattr(FsspecObject, "read", counting)
    return seen


def _reader() -> FileReader:
    reader = FileReader(URL, storage=FsspecStorage.for_url(URL), digest_header=signed_digest)
    reader.block_bytes = _vault(reader).block_bytes
    return reader


def _vault(reader: FileReader) -> VaultInfo:
    return decode(reader.header, source=URL, signed=reader.signed_digest)


def test_large_tensors_go_in_block_pieces_on_threads_each_verified(
    requests: list[tuple[int, int, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metadata, "BLOCK_BYTES", 64 << 10)
    monkeypatch.setattr(tuning, "REMOTE_PIECE_BYTES", 128 << 10)  # two blocks a request
    monkeypatch.setattr(tuning, "SMALL_READ_BYTES", 64 << 10)  # 512 KiB tensors are large
    state = {"a": torch.randn(1 << 17), "b": torch.randn(1 << 17)}  # 512 KiB each
    statevault.save(state, URL)
    with _reader() as reader:
        assert requests == [(0, tuning.HEAD_GUESS_BYTES, "MainThread")]
        digests = _vault(reader).checksums
        out = [torch.empty(1 << 17), torch.empty(1 << 17)]
        requests.clear()
        reader.read_rows(out, digests)
    assert torch.equal(out[0], state["a"]) and torch.equal(out[1], state["b"])
    assert sorted(size for _, size, _ in requests) == [128 << 10] * 8
    assert all(name.startswith("statevault-read") for _, _, name in requests)


def test_a_damaged_block_of_a_remote_object_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metadata, "BLOCK_BYTES", 64 << 10)
    statevault.save({"a": torch.randn(1 << 17)}, URL)
    fs = FsspecStorage.for_url(URL).fs
    data = bytearray(fs.cat_file(URL))
    data[-1] ^= 0xFF
    fs.pipe_file(URL, bytes(data))
    with _reader() as reader:
        digests = _vault(reader).checksums
        with pytest.raises(ChecksumMismatchError, match=r"'a' is damaged in block 7"):
            reader.read_rows([torch.empty(1 << 17)], digests)
        found, count, _ = hash_rows(reader, digests)
    assert count == 1 and [row for row, _ in found] == [0]


def test_small_tensors_are_one_request_per_run(requests: list[tuple[int, int, str]]) -> None:
    state = {f"t{i}": torch.full((16,), float(i)) for i in range(50)}
    statevault.save(state, URL)
    with _reader() as reader:
        digests = _vault(reader).checksums
        requests.clear()
        found, count, nbytes = hash_rows(reader, digests)
    assert (found, count, nbytes) == ([], 50, 50 * 64)
    assert [size for _, size, _ in requests] == [50 * 64]


def test_staging_to_a_device_reads_through_the_object() -> None:
    state = {"a": torch.randn(1000), "b": torch.randn(10)}
    statevault.save(state, URL)
    with _reader() as reader:
        digests = _vault(reader).checksums
        table = reader.header.entries
        outs = {name: torch.empty_like(state[name]) for name in state}
        jobs = [(table[name], outs[name], digests[name]) for name in state]
        reader.read_to_device(jobs, staging_bytes=1024, buffers=2)  # CPU: the same pipeline
    assert all(torch.equal(outs[name], state[name]) for name in state)


def test_a_remote_object_has_no_descriptor() -> None:
    statevault.save({"a": torch.ones(2)}, URL)
    with _reader() as reader, pytest.raises(StateVaultError, match="has no descriptor"):
        reader.fileno()
