"""The I/O engine's fast paths: batched scatter reads, gathered writes, cheap header encoding.

Thresholds are lowered per test so every path (batches, parallel threads, short reads and
writes) runs on kilobytes, not megabytes.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import statevault
from helpers.storage import FaultyStorage
from statevault.engine import tuning
from statevault.engine.memory import ByteBuffer, remaining_after
from statevault.engine.reader import plan_reads
from statevault.engine.staging import plan_staging
from statevault.engine.writer import plan_write_runs
from statevault.errors import ChecksumMismatchError, TruncatedFileError
from statevault.fileformat.container import encode_header, plan_layout, tensor_table
from statevault.fileformat.table import TensorEntry
from statevault.saving.save import save_to


@pytest.fixture
def tiny_thresholds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tuning, "SMALL_READ_BYTES", 256)
    monkeypatch.setattr(tuning, "SMALL_WRITE_BYTES", 256)
    monkeypatch.setattr(tuning, "BATCH_BYTES", 1024)
    monkeypatch.setattr(tuning, "CHUNK_BYTES", 512)
    monkeypatch.setattr(tuning, "VERIFY_CHUNK_BYTES", 384)
    monkeypatch.setattr(tuning, "WRITE_CHUNK_BYTES", 512)
    monkeypatch.setattr(tuning, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(tuning, "MAX_IOV", 7)


def _mixed_state() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    state = {f"small.{i}": torch.randn(i % 9, generator=generator) for i in range(60)}
    state |= {f"big.{i}": torch.randn(300 + i, generator=generator) for i in range(5)}
    state["half"] = torch.randn(41, generator=generator).to(torch.bfloat16)
    state["flag"] = torch.tensor([True, False, True])
    return state


def _entry(name: str, start: int, end: int) -> TensorEntry:
    return TensorEntry(name, "U8", (end - start,), start, end)


def _rows(sizes: list[int]) -> tuple[list[int], list[int]]:
    starts = list(itertools.accumulate([0, *sizes[:-1]]))
    return starts, [start + size for start, size in zip(starts, sizes, strict=True)]


def test_plan_reads_groups_contiguous_runs_within_limits(tiny_thresholds: None) -> None:
    sizes = [100] * 30
    starts, ends = _rows(sizes)
    tasks = list(plan_reads(starts, ends, [True] * 30, limit=1024))
    assert [row for first, end, _ in tasks for row in range(first, end)] == list(range(30))
    for first, end, nbytes in tasks:  # none lost, file order, within both limits
        assert end - first <= 7 and nbytes == sum(sizes[first:end]) <= 1024


def test_plan_reads_breaks_at_gaps_and_reads_large_tensors_alone(tiny_thresholds: None) -> None:
    sizes = [10, 10, 10, 10, 300, 10, 0, 10]
    starts, ends = _rows(sizes)
    wanted = [1, 1, None, 1, 1, 1, 1, 1]  # row 2 is not wanted
    tasks = list(plan_reads(starts, ends, wanted, limit=1024))
    assert tasks == [(0, 2, 20), (3, 4, 10), (4, 5, 300), (5, 8, 20)]


def test_a_tensor_read_into_two_destinations_fills_both(tmp_path: Path) -> None:
    path = tmp_path / "two.safetensors"
    statevault.save({"w": torch.arange(6.0)}, path)
    first, second = torch.zeros(6), torch.zeros(6)
    with statevault.Checkpoint(path) as checkpoint:
        checkpoint.read_into([("w", first), ("w", second)])
    assert torch.equal(first, torch.arange(6.0)) and torch.equal(second, torch.arange(6.0))


def test_mixed_state_round_trips_through_every_path(tmp_path: Path, tiny_thresholds: None) -> None:
    state = _mixed_state()
    path = tmp_path / "mixed.safetensors"
    statevault.save(state, path)
    loaded = statevault.load(path)
    assert loaded.keys() == state.keys()
    for name, tensor in state.items():
        assert torch.equal(loaded[name], tensor), name
        assert loaded[name].dtype == tensor.dtype


def test_bytes_identical_to_safetensors_for_many_small_tensors(
    tmp_path: Path, tiny_thresholds: None
) -> None:
    state = _mixed_state()
    ours, theirs = tmp_path / "ours.safetensors", tmp_path / "theirs.safetensors"
    statevault.save(state, ours, checksum=False)
    save_file(state, theirs)
    # Same layout and data section; only the header differs (our metadata rides along).
    ours_bytes, theirs_bytes = ours.read_bytes(), theirs.read_bytes()
    ours_data = ours_bytes[8 + int.from_bytes(ours_bytes[:8], "little") :]
    theirs_data = theirs_bytes[8 + int.from_bytes(theirs_bytes[:8], "little") :]
    assert ours_data == theirs_data


def test_header_encoding_matches_json_dumps() -> None:
    entries = plan_layout(
        [
            ("ü\u2603", "F32", (2, 3), 24),
            ('q"x\\', "BF16", (), 2),
            ("z", "U8", (0,), 0),
            ("tab\there", "F32", (2, 3), 24),
            ("soft\u00adhyphen", "U8", (1, 1, 1), 1),
        ]
    )
    metadata = {"format": "pt", "é": '{"a": 1}'}
    table: dict[str, object] = {"__metadata__": metadata}
    table |= {e.name: e.to_json() for e in entries}
    body = json.dumps(table, separators=(",", ":"), ensure_ascii=False).encode()
    body += b" " * (-len(body) % 8)
    assert encode_header(entries, metadata) == len(body).to_bytes(8, "little") + body


def test_canonical_tensor_table_matches_sorted_json_dumps() -> None:
    entries = plan_layout([("b\n", "F32", (2,), 8), ('a"', "I8", (3, 1), 3), ("c", "U8", (), 1)])
    expected = json.dumps(
        {e.name: e.to_json() for e in entries},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    assert "{" + tensor_table(entries, canonical=True) + "}" != expected  # file order, not sorted
    ordered = sorted(entries, key=lambda e: e.name)
    assert "{" + tensor_table(ordered, canonical=True) + "}" == expected


def test_write_runs_gather_small_tensors_and_isolate_large_ones(tiny_thresholds: None) -> None:
    # SMALL_WRITE_BYTES is 256 and MAX_IOV 7 here
    sizes = [100, 100, 100, 10, 300, 0, 0, 5, 1, 1, 1, 1, 1, 1, 1, 1, 256, 200]
    runs = plan_write_runs(sizes)
    assert [list(run) for run in runs] == [
        [0, 1, 2],  # reached 256 bytes
        [3],  # cut short by the large tensor after it
        [4],
        [5, 6, 7, 8, 9, 10, 11],  # reached MAX_IOV tensors
        [12, 13, 14, 15],
        [16],
        [17],
    ]
    assert plan_write_runs([]) == []


def test_copies_of_small_tensors_live_until_the_writer_thread_wrote_them(
    tmp_path: Path, tiny_thresholds: None
) -> None:
    def slow(number: int) -> None:
        time.sleep(0.01)  # long enough for a copy freed too early to be reused or unmapped

    slow_storage = FaultyStorage(before_write=slow)
    generator = torch.Generator().manual_seed(1)
    # Transposed views are not contiguous, so each is copied right before it is written:
    # small ones (128 bytes) a run at a time, large ones (1 KiB) one by one.
    state = {f"s{i}": torch.randn(8, 4, generator=generator).t() for i in range(40)}
    state |= {f"l{i}": torch.randn(16, 16, generator=generator).t() for i in range(3)}
    path = tmp_path / "copies.safetensors"
    save_to(state, path, storage=slow_storage)
    assert any(name.startswith("statevault-write") for name in slow_storage.write_threads)
    loaded = statevault.load(path)  # verified: a byte changed after hashing would raise
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_remaining_after_resumes_mid_buffer() -> None:
    buffers: list[ByteBuffer] = [memoryview(b"abc"), memoryview(b""), memoryview(b"defg")]
    assert [bytes(b) for b in remaining_after(buffers, 0)] == [b"abc", b"", b"defg"]
    assert [bytes(b) for b in remaining_after(buffers, 3)] == [b"defg"]
    assert [bytes(b) for b in remaining_after(buffers, 5)] == [b"fg"]
    assert remaining_after(buffers, 7) == []


def test_corrupt_small_tensor_in_a_batch_is_named(tmp_path: Path, tiny_thresholds: None) -> None:
    path = tmp_path / "mixed.safetensors"
    statevault.save(_mixed_state(), path)
    with statevault.Checkpoint(path) as checkpoint:
        victim = checkpoint.tensors["small.17"]
    with path.open("r+b") as handle:
        handle.seek(victim.offset + 1)
        byte = handle.read(1)
        handle.seek(victim.offset + 1)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ChecksumMismatchError, match=r"small\.17"):
        statevault.load(path)
    assert torch.equal(statevault.load(path, verify=False)["small.16"], _mixed_state()["small.16"])


def test_file_that_shrinks_after_open_raises_truncated(
    tmp_path: Path, tiny_thresholds: None
) -> None:
    path = tmp_path / "mixed.safetensors"
    statevault.save(_mixed_state(), path)
    with statevault.Checkpoint(path) as checkpoint:
        os.truncate(path, checkpoint.tensors["small.3"].offset + 1)
        with pytest.raises(TruncatedFileError, match="ends early"):
            checkpoint.read([f"small.{i}" for i in range(60)])  # the batched preadv path


def test_short_writes_and_reads_are_resumed(
    tmp_path: Path, tiny_thresholds: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_pwritev, real_preadv = os.pwritev, os.preadv
    short_writes = []

    def pwritev(fd: int, buffers: list[memoryview], offset: int) -> int:
        short_writes.append(offset)
        return real_pwritev(fd, [memoryview(b"".join(bytes(b) for b in buffers))[:5]], offset)

    def preadv(fd: int, buffers: list[memoryview], offset: int) -> int:
        return real_preadv(fd, [memoryview(buffers[0])[:3]], offset)

    # the system calls themselves: the local storage and the reader must resume both
    monkeypatch.setattr(os, "pwritev", pwritev)
    state = _mixed_state()
    path = tmp_path / "short.safetensors"
    statevault.save(state, path)
    assert 0 in short_writes and len(short_writes) > len(state)  # header and data, in pieces
    monkeypatch.setattr(os, "preadv", preadv)
    loaded = statevault.load(path)
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_plan_staging_splits_big_and_packs_small_tensors() -> None:
    dest = torch.empty(0)
    entries = [_entry("a", 0, 10), _entry("b", 10, 35), _entry("c", 35, 37), _entry("e", 50, 52)]
    fills = plan_staging([(e, dest, None) for e in reversed(entries)], 16)
    shapes = [[(piece[0].name, piece[1], piece[2]) for piece in fill] for fill in fills]
    assert shapes == [
        [("a", 0, 10), ("b", 0, 6)],  # back to back in the file: one fill
        [("b", 6, 16)],
        [("b", 22, 3), ("c", 0, 2)],
        [("e", 0, 2)],  # a gap in the file starts a new fill
    ]
    assert all(sum(piece[2] for piece in fill) <= 16 for fill in fills)


def test_staged_device_pipeline_fills_and_verifies_on_cpu(tmp_path: Path) -> None:
    # The CUDA path's staging logic, run with plain buffers and CPU destinations.
    state = _mixed_state()
    path = tmp_path / "staged.safetensors"
    statevault.save(state, path)
    with statevault.Checkpoint(path) as checkpoint:
        reader = checkpoint._reader
        dests = {name: torch.empty_like(t) for name, t in state.items()}
        jobs = [
            (reader.header.entries[n], d, checkpoint.tensors[n].checksum) for n, d in dests.items()
        ]
        reader.read_to_device(jobs, staging_bytes=100, buffers=2)
    assert all(torch.equal(dests[n], t) for n, t in state.items())

    with statevault.Checkpoint(path) as checkpoint:
        victim = checkpoint.tensors["big.2"]
    with path.open("r+b") as handle:
        handle.seek(victim.offset + victim.nbytes - 1)
        last = handle.read(1)[0]
        handle.seek(victim.offset + victim.nbytes - 1)
        handle.write(bytes([last ^ 0xFF]))
    with (
        statevault.Checkpoint(path) as checkpoint,
        pytest.raises(ChecksumMismatchError, match=r"big\.2"),
    ):
        reader = checkpoint._reader
        jobs = [
            (reader.header.entries[n], d, checkpoint.tensors[n].checksum) for n, d in dests.items()
        ]
        reader.read_to_device(jobs, staging_bytes=100, buffers=2)


def test_large_tensors_read_and_verify(tmp_path: Path, tiny_thresholds: None) -> None:
    state = _mixed_state()
    path = tmp_path / "big.safetensors"
    statevault.save(state, path)
    loaded = statevault.load(path)
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    with statevault.Checkpoint(path) as checkpoint:
        victim = checkpoint.tensors["big.4"]
    with path.open("r+b") as handle:
        handle.seek(victim.offset + victim.nbytes // 2)
        middle = handle.read(1)[0]
        handle.seek(victim.offset + victim.nbytes // 2)
        handle.write(bytes([middle ^ 0x01]))
    with pytest.raises(ChecksumMismatchError, match=r"big\.4"):
        statevault.load(path)


def test_large_tensor_of_a_shrunk_file_raises_truncated(
    tmp_path: Path, tiny_thresholds: None
) -> None:
    path = tmp_path / "big.safetensors"
    statevault.save(_mixed_state(), path)
    with statevault.Checkpoint(path) as checkpoint:
        os.truncate(path, checkpoint.tensors["big.0"].offset + 8)
        with pytest.raises(TruncatedFileError):
            checkpoint.read(["big.0"])
