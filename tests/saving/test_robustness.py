"""Readers facing hostile input: no hang on special files, no escape from a checkpoint's
directory, no bytes of a foreign file in an error, clear refusals for unusable names and
devices."""

from __future__ import annotations

import contextlib
import json
import os
import struct
import subprocess
import sys
import threading
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import statevault
from statevault.errors import (
    CheckpointNotFoundError,
    DeviceUnavailableError,
    HeaderError,
    UnsupportedObjectError,
)
from statevault.readers.safetensors_file import SafetensorsCheckpoint

GUARD_SECONDS = 10.0  # a hang guard, not a speed assert: each call takes milliseconds


def outcome(call: Callable[[], object], fifos: list[Path]) -> BaseException | None:
    """What ``call`` raised (None if nothing), run on a thread so that a regression that
    blocks on a named pipe fails the test instead of hanging the suite."""
    caught: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # handed to the test below
            caught.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(GUARD_SECONDS)
    if worker.is_alive():
        for fifo in fifos:  # a writer that closes at once gives the blocked reader EOF
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(GUARD_SECONDS)
        pytest.fail(f"{call} blocked on a named pipe for over {GUARD_SECONDS} s")
    return caught[0] if caught else None


def write_shards(directory: Path, count: int = 2) -> dict[str, str]:
    """A Hugging Face-style sharded checkpoint: ``count`` shards and their index."""
    directory.mkdir(parents=True, exist_ok=True)
    weight_map = {}
    for i in range(count):
        shard = f"model-{i + 1:05d}-of-{count:05d}.safetensors"
        statevault.save({f"w{i}": torch.full((2,), float(i))}, directory / shard)
        weight_map[f"w{i}"] = shard
    index = {"metadata": {}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    return weight_map


# -- 1. only regular files, checked on the open descriptor --------------------------------


@pytest.mark.parametrize(
    "call",
    [
        statevault.load,
        statevault.inspect,
        statevault.verify,
        statevault.Checkpoint,
        lambda path: statevault.diff(path, path),
        lambda path: statevault.load_into(torch.nn.Linear(1, 1), path),
    ],
    ids=["load", "inspect", "verify", "Checkpoint", "diff", "load_into"],
)
def test_named_pipe_is_refused_not_waited_on(tmp_path: Path, call: Callable[[Path], Any]) -> None:
    fifo = tmp_path / "ckpt.safetensors"
    os.mkfifo(fifo)
    error = outcome(lambda: call(fifo), [fifo])
    assert isinstance(error, CheckpointNotFoundError), error
    assert str(fifo) in str(error) and "named pipe" in str(error)


def test_named_pipe_shard_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "sharded"
    weight_map = write_shards(directory)
    second = directory / weight_map["w1"]
    second.unlink()
    os.mkfifo(second)
    for call in (statevault.inspect, statevault.verify):
        error = outcome(lambda call=call: call(directory), [second])  # type: ignore[misc]
        assert isinstance(error, CheckpointNotFoundError), error
        assert str(second) in str(error) and "named pipe" in str(error)


def test_named_pipe_index_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "sharded"
    write_shards(directory)
    index = directory / "model.safetensors.index.json"
    index.unlink()
    os.mkfifo(index)
    error = outcome(lambda: statevault.inspect(directory), [index])
    assert isinstance(error, CheckpointNotFoundError), error
    assert "named pipe" in str(error)


def test_file_symlink_loop_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "loop.safetensors"
    path.symlink_to(path.name)
    with pytest.raises(CheckpointNotFoundError, match="cannot be opened") as caught:
        statevault.load(path)
    assert isinstance(caught.value.__cause__, OSError)  # the cause is kept


def test_character_device_is_refused() -> None:
    error = outcome(lambda: statevault.load("/dev/zero"), [])
    assert isinstance(error, CheckpointNotFoundError), error
    assert "character device" in str(error)


# -- 2. nothing outside the checkpoint's directory; no foreign bytes in errors --------------

SECRET = b"root:x:0:0:root:/root:/bin/bash\n" * 4


def test_shard_symlink_outside_directory_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "elsewhere" / "passwd"
    secret.parent.mkdir()
    secret.write_bytes(SECRET)
    directory = tmp_path / "sharded"
    weight_map = write_shards(directory)
    shard = directory / weight_map["w1"]
    shard.unlink()
    shard.symlink_to(secret)
    with pytest.raises(HeaderError, match="outside the checkpoint directory") as caught:
        statevault.inspect(directory)
    report = statevault.verify(directory)  # a damaged checkpoint is verify's finding
    assert not report.ok and report.header_error is not None
    for message in (str(caught.value), report.header_error):
        assert str(shard) in message and "outside the checkpoint directory" in message
        assert "root:x" not in message
        assert str(struct.unpack("<Q", SECRET[:8])[0]) not in message


def test_shard_symlink_loop_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "sharded"
    weight_map = write_shards(directory)
    shard = directory / weight_map["w1"]
    shard.unlink()
    shard.symlink_to(shard.name)  # points at itself
    with pytest.raises(HeaderError, match="cannot be resolved") as caught:
        statevault.inspect(directory)
    assert str(shard) in str(caught.value)


def test_index_symlink_outside_directory_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "sharded"
    write_shards(directory)
    index = directory / "model.safetensors.index.json"
    elsewhere = tmp_path / "index.json"
    elsewhere.write_bytes(index.read_bytes())
    index.unlink()
    index.symlink_to(elsewhere)
    with pytest.raises(HeaderError, match="outside the checkpoint directory"):
        statevault.inspect(directory)


def test_shard_symlinks_inside_directory_and_hf_cache_blobs_are_followed(tmp_path: Path) -> None:
    # <repo>/snapshots/<revision>/<file> -> ../../blobs/<hash>, as the Hugging Face cache lays out
    repo = tmp_path / "models--org--tiny"
    snapshot = repo / "snapshots" / "abc123"
    weight_map = write_shards(snapshot)
    blobs = repo / "blobs"
    blobs.mkdir()
    for i, shard in enumerate(sorted(set(weight_map.values()))):
        blob = blobs / f"blob{i}"
        (snapshot / shard).rename(blob)
        (snapshot / shard).symlink_to(Path("../../blobs") / blob.name)
    local = snapshot / "renamed.json"
    (snapshot / "model.safetensors.index.json").rename(local)
    (snapshot / "model.safetensors.index.json").symlink_to(local.name)
    assert statevault.verify(snapshot).ok
    assert statevault.inspect(snapshot).kind == "sharded"


def test_foreign_file_error_quotes_none_of_its_bytes(tmp_path: Path) -> None:
    passwd = tmp_path / "passwd.safetensors"
    passwd.write_bytes(SECRET)
    with pytest.raises(HeaderError, match="not a plausible header length") as caught:
        statevault.load(passwd)
    assert str(struct.unpack("<Q", SECRET[:8])[0]) not in str(caught.value)
    assert "root:x" not in str(caught.value)
    # a small length followed by anything but '{' is not a checkpoint either
    small = tmp_path / "small.bin.safetensors"
    small.write_bytes(struct.pack("<Q", 4096) + b"#!/bin/sh\n" * 3)
    with pytest.raises(HeaderError, match="not a plausible header length") as caught:
        statevault.load(small)
    assert "4096" not in str(caught.value)


def test_non_utf8_header_error_quotes_no_byte(tmp_path: Path) -> None:
    path = tmp_path / "latin1.safetensors"
    body = b'{"\xe9":1}'
    path.write_bytes(struct.pack("<Q", len(body)) + body)
    with pytest.raises(HeaderError, match="not valid UTF-8") as caught:
        statevault.load(path)
    assert "0xe9" not in str(caught.value)


# -- 5. lone surrogates ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "metadata", "where"),
    [
        ({"w\udc80": torch.zeros(1)}, None, "w\\udc80: key"),
        ({"opt": {"name\ud800x": 1}}, None, "opt.name\\ud800x: key"),
        ({"opt": {"name": "v\udcff"}}, None, "opt.name: string"),
        ({"w": torch.zeros(1)}, {"k\udc80": "v"}, "metadata['k\\udc80']: key"),
        ({"w": torch.zeros(1)}, {"k": "\udc80"}, "metadata['k']: value"),
    ],
)
def test_lone_surrogates_are_refused_with_their_path(
    tmp_path: Path, obj: Any, metadata: dict[str, str] | None, where: str
) -> None:
    path = tmp_path / "s.safetensors"
    with pytest.raises(UnsupportedObjectError) as caught:
        statevault.save(obj, path, metadata=metadata)
    message = str(caught.value)
    assert message.startswith(where)
    assert "lone surrogate" in message and "rename" in message
    message.encode("utf-8")  # the message itself is printable
    assert not path.exists()


def test_non_ascii_names_still_save(tmp_path: Path) -> None:
    state = {"gewicht_ä": torch.ones(2), "层": {"名字": "值 ☃"}}
    statevault.save(state, tmp_path / "u.safetensors")
    loaded = statevault.load(tmp_path / "u.safetensors")
    assert loaded["层"] == {"名字": "值 ☃"}
    assert torch.equal(loaded["gewicht_ä"], torch.ones(2))


# -- 6. devices torch cannot use are refused before any read -------------------------------


@pytest.mark.parametrize("device", ["xla", "hpu", "ipu"])
def test_unusable_device_is_refused_before_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, device: str
) -> None:
    path = tmp_path / "d.safetensors"
    statevault.save({"w": torch.ones(3)}, path)
    reads: list[str] = []
    original = SafetensorsCheckpoint.read_into

    def counting(self: SafetensorsCheckpoint, *args: Any, **kwargs: Any) -> None:
        reads.append("read")
        original(self, *args, **kwargs)

    monkeypatch.setattr(SafetensorsCheckpoint, "read_into", counting)
    with pytest.raises(DeviceUnavailableError, match=f"device='{device}'"):
        statevault.load(path, device=device)
    assert reads == []
    assert isinstance(statevault.load(path, device="meta")["w"], torch.Tensor)
    assert reads == ["read"]


# -- 3. hostile input costs about its size -------------------------------------------------


def container(header: str, data: bytes = b"") -> bytes:
    body = header.encode()
    body += b" " * (-len(body) % 8)
    return struct.pack("<Q", len(body)) + body + data


def repeated(head: str, item: str, tail: str, size: int) -> str:
    return head + ",".join([item] * ((size - len(head) - len(tail)) // (len(item) + 1))) + tail


HOSTILE = {
    "objects-in-array": lambda size: repeated("[", "{}", "]", size),
    "object-members": lambda size: "{" + ",".join(f'"k{i}":{{}}' for i in range(size // 9)) + "}",
    "objects-in-metadata": lambda size: repeated('{"__metadata__":{"x":[', "{}", "]}}", size),
    "arrays-in-array": lambda size: repeated('{"__metadata__":{"x":[', "[]", "]}}", size),
}


def test_a_malformed_header_is_parsed_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entries = [
        f'"t{i}":{{"dtype":"U8","shape":[1],"data_offsets":[{i},{i + 1}]}}' for i in range(500)
    ]
    entries.append('"last":{"dtype":"U8","shape":[2],"data_offsets":[500,501]}')  # span is 1
    path = tmp_path / "bad.safetensors"
    path.write_bytes(container("{" + ",".join(entries) + "}", bytes(501)))
    parses: list[int] = []
    real = json.loads

    def counting(text: Any, *args: Any, **kwargs: Any) -> Any:
        parses.append(len(text))
        return real(text, *args, **kwargs)

    monkeypatch.setattr(json, "loads", counting)
    with pytest.raises(HeaderError, match=r"tensor .last..*needs 2 bytes"):
        statevault.Checkpoint(path)
    assert len(parses) == 1  # the fast pass found it; nothing parsed the header again


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_header_costs_about_its_size(tmp_path: Path, case: str) -> None:
    # deterministic: bytes allocated by Python, not time. Above the scan threshold, so the
    # pre-parse scan and the one-pass hook both take part.
    from statevault.fileformat.table import SCAN_CHARS

    path = tmp_path / "hostile.safetensors"
    path.write_bytes(container(HOSTILE[case](SCAN_CHARS + (1 << 20))))
    size = path.stat().st_size
    tracemalloc.start()
    try:
        with pytest.raises(HeaderError, match=str(path)):
            statevault.Checkpoint(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * size, f"{peak / size:.1f}x the file's size"


HOSTILE_UNDER_LIMIT = """
import resource, sys
import statevault
from statevault.errors import StateVaultError
calls = (statevault.load, statevault.verify)  # loaded now: the package imports lazily
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
base = int(status["VmSize"].split()[0]) * 1024
limit = base + 8 * int(sys.argv[1])  # a small multiple of the largest header, no more
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
for path in sys.argv[2:]:
    for call in calls:
        try:
            report = call(path)
            print("ok" if report is None else f"report {type(report).__name__} {report.ok}")
        except StateVaultError as exc:
            print(type(exc).__name__)
        except BaseException as exc:
            print("RAW", type(exc).__name__)
"""


def test_hostile_headers_fit_an_address_space_limit(tmp_path: Path) -> None:
    size = 12 << 20  # above the scan threshold, so both defences take part
    paths = []
    for case, make in HOSTILE.items():
        path = tmp_path / f"{case}.safetensors"
        path.write_bytes(container(make(size)))
        paths.append(str(path))
    done = subprocess.run(
        [sys.executable, "-c", HOSTILE_UNDER_LIMIT, str(size), *paths],
        capture_output=True,
        text=True,
        timeout=300,  # a hang guard only
        check=False,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["HeaderError", "report", "VerifyReport", "False"] * len(HOSTILE)


@pytest.mark.parametrize(
    ("extra", "accepted"),
    [("[1,2]", True), ("7", True), ("[true]", False), ("[-1]", False), ("[[]]", False)],
)
def test_a_header_is_judged_alike_below_and_above_the_scan_size(
    tmp_path: Path, extra: str, accepted: bool
) -> None:
    from statevault.fileformat.table import SCAN_CHARS

    tensor = f'"t":{{"dtype":"U8","shape":[1],"data_offsets":[0,1],"extra":{extra}}}'
    for padding in (0, SCAN_CHARS):  # a long metadata string pushes it past the scan size
        path = tmp_path / f"h{padding}.safetensors"
        header = f'{{"__metadata__":{{"pad":"{"x" * padding}"}},{tensor}}}'
        path.write_bytes(container(header, b"\x07"))
        if accepted:
            assert statevault.load(path)["t"].tolist() == [7]
        else:
            with pytest.raises(HeaderError):
                statevault.load(path)


def test_a_huge_shape_stops_multiplying_at_the_bound() -> None:
    from statevault.fileformat.table import bounded_numel

    seen: list[int] = []

    class Counted(list[int]):
        def __iter__(self) -> Any:
            for dim in super().__iter__():
                seen.append(dim)
                yield dim

    # a million dims of 10**6: multiplied out, a bigint of 20 million digits
    assert bounded_numel(Counted([10**6] * 1_000_000), 2**63 - 1) is None
    assert len(seen) == 4  # 10**24 > 2**63 after the fourth: no further work
    assert bounded_numel([0, 2**62, 1], 2**63 - 1) == 0  # empty, and its dims fit int64
    assert bounded_numel([0, 2**63], 2**63 - 1) is None
    assert bounded_numel([3, 1, 5], 2**63 - 1) == 15
