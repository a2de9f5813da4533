"""A save killed or failing at any moment leaves the previous checkpoint intact and loadable."""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import statevault
from helpers.storage import FaultyStorage
from statevault.engine.temps import TEMP_SUFFIX
from statevault.saving.save import save_to

SRC = str(Path(statevault.__file__).resolve().parents[1])

# The child builds ~200 MB of new state (5 tensors of 40 MB, each filled with its index), says
# "ready", then saves it over the old checkpoint with fsync, which takes long enough to be
# killed at many different points: before the temp file, mid-data, before/after the rename.
CHILD = textwrap.dedent(
    """
    import os, sys, time, torch, statevault
    state = {"tag": "new", "layers": [torch.full((10_000_000,), float(i)) for i in range(5)]}
    print("ready", flush=True)
    sys.stdin.readline()  # wait for "go": children start (import torch) in parallel
    began = time.monotonic()
    statevault.save(state, sys.argv[1])
    print(f"{time.monotonic() - began}", flush=True)
    os._exit(0)  # skip interpreter teardown; only the save matters
    """
)
NEW_LAYERS = 5
NEW_BYTES = NEW_LAYERS * 10_000_000 * 4


def old_state() -> dict[str, Any]:
    return {"tag": "old", "layers": [torch.arange(1000.0) * i for i in range(3)]}


def spawn_child(path: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=SRC)
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def go(child: subprocess.Popen[str]) -> None:
    """Wait until the child holds its new state, then let it start saving."""
    assert child.stdout is not None and child.stdin is not None
    line = child.stdout.readline()
    if line != "ready\n":
        child.kill()
        _, error = child.communicate(timeout=60)
        pytest.fail(f"child did not start: {line!r} {error}")
    child.stdin.write("go\n")
    child.stdin.flush()


def finish(child: subprocess.Popen[str]) -> int:
    """Wait for the child and close its pipes (unclosed pipes are ResourceWarnings)."""
    child.communicate(timeout=120)
    return child.returncode


def classify(path: Path) -> str:
    """'old' or 'new' after verifying every checksum; anything else fails the test."""
    state = statevault.load(path)
    if state["tag"] == "old":
        expected = old_state()
        assert len(state["layers"]) == len(expected["layers"])
        for found, want in zip(state["layers"], expected["layers"], strict=True):
            assert torch.equal(found, want)
        return "old"
    assert state["tag"] == "new"
    assert len(state["layers"]) == NEW_LAYERS
    for index, layer in enumerate(state["layers"]):
        assert layer.shape == (10_000_000,) and bool((layer == index).all())
    return "new"


def leftovers(directory: Path, keep: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p != keep)


def temp_files(directory: Path, path: Path) -> list[Path]:
    return [p for p in directory.iterdir() if p.name.startswith(f".{path.name}.")]


def wait_for_progress(directory: Path, path: Path, fraction: float, child: Any) -> bool:
    """Block until the temp file holds ``fraction`` of the new data; False if the save ended."""
    while child.poll() is None:
        for temp in temp_files(directory, path):
            try:
                if temp.stat().st_size >= fraction * NEW_BYTES:
                    return True
            except FileNotFoundError:  # renamed or removed between listing and stat
                pass
        time.sleep(0.0005)
    return False


@pytest.mark.slow
def test_sigkill_mid_save_leaves_old_or_new_file(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.safetensors"
    rng = random.Random(1234)
    # Kill points, located by watching the temp file grow rather than by timing, so they land
    # mid-save however busy the machine is: before any data, at random fractions of the data,
    # then a random short delay after the data is complete (around fsync and rename).
    moments: list[tuple[float, float]] = [
        (0.0, 0.0),
        (rng.uniform(0.05, 0.5), 0.0),
        (rng.uniform(0.5, 0.95), 0.0),
        (1.0, rng.uniform(0.0, 0.05)),
    ]
    # All children import torch in parallel up front; the last one is never killed.
    children = [spawn_child(path) for _ in range(len(moments) + 1)]
    outcomes = []
    for (fraction, delay), child in zip(moments, children, strict=False):
        statevault.save(old_state(), path)
        go(child)
        if fraction > 0:
            wait_for_progress(tmp_path, path, fraction, child)
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        assert finish(child) in (-signal.SIGKILL, 0)
        outcomes.append(classify(path))
        # A kill may strand the temp file (never under the final name); nothing else appears.
        stray = leftovers(tmp_path, path)
        assert all(p.name.endswith(TEMP_SUFFIX) for p in stray), stray
        assert stray == temp_files(tmp_path, path)
        for p in stray:
            p.unlink()
    assert outcomes[:3] == ["old", "old", "old"], outcomes  # killed before the rename

    # An uninterrupted child shows the new state does land, and leaves nothing behind.
    child = children[-1]
    go(child)
    out, _ = child.communicate(timeout=120)
    assert child.returncode == 0, out
    assert classify(path) == "new"
    assert leftovers(tmp_path, path) == []


def test_failing_write_mid_data_keeps_old_file_and_removes_temp(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.safetensors"
    statevault.save(old_state(), path)
    before = path.read_bytes()
    # after two tensors' bytes are already in the temp file (one write per 1.2 MB tensor)
    storage = FaultyStorage(fail_write=3, error=OSError("device went away"))
    big = {"tag": "new", "layers": [torch.full((300_000,), float(i)) for i in range(5)]}
    with pytest.raises(OSError, match="device went away") as caught:
        save_to(big, path, storage=storage)
    assert not isinstance(caught.value, statevault.StateVaultError)  # passed on as raised
    assert len(storage.write_threads) == 3 and storage.ended == ["aborted"]
    assert path.read_bytes() == before
    assert leftovers(tmp_path, path) == []
    assert classify(path) == "old"


def test_tensor_changed_mid_save_keeps_old_file_and_removes_temp(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.safetensors"
    statevault.save(old_state(), path)
    before = path.read_bytes()
    layers = [torch.full((300_000,), float(i)) for i in range(5)]

    def shrink_a_later_tensor(number: int) -> None:
        if number == 2:  # two tensors written; the fourth is resized before its turn
            layers[3].resize_(10)

    storage = FaultyStorage(after_write=shrink_a_later_tensor)
    with pytest.raises(statevault.StateVaultError, match=r"'layers\.3' changed size"):
        save_to({"tag": "new", "layers": layers}, path, storage=storage)
    assert len(storage.write_threads) == 3 and storage.ended == ["aborted"]
    assert path.read_bytes() == before
    assert leftovers(tmp_path, path) == []


def test_failed_write_on_the_writer_thread_keeps_old_file(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.safetensors"
    statevault.save(old_state(), path)
    before = path.read_bytes()
    disk_full = OSError(errno.ENOSPC, "No space left on device")
    storage = FaultyStorage(fail_write=2, error=disk_full)
    small = {f"t{i}": torch.full((1000,), float(i)) for i in range(2000)}  # ~8 runs of 1 MiB
    with pytest.raises(OSError, match="No space left"):
        save_to(small, path, storage=storage)
    assert storage.write_threads[1].startswith("statevault-write")  # raised there, reported here
    assert storage.ended == ["aborted"]
    assert path.read_bytes() == before
    assert leftovers(tmp_path, path) == []


@pytest.mark.parametrize("error", [KeyboardInterrupt, MemoryError])
def test_interrupt_during_write_keeps_old_file(error: type[BaseException], tmp_path: Path) -> None:
    path = tmp_path / "ckpt.safetensors"
    statevault.save(old_state(), path)
    before = path.read_bytes()
    storage = FaultyStorage(fail_write=2, error=error())
    with pytest.raises(error):
        save_to(
            {"tag": "new", "big": [torch.ones(600_000) for _ in range(3)]}, path, storage=storage
        )
    assert storage.ended == ["aborted"]
    assert path.read_bytes() == before
    assert leftovers(tmp_path, path) == []


def test_failed_commit_keeps_old_file(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.safetensors"
    statevault.save(old_state(), path)
    before = path.read_bytes()
    storage = FaultyStorage(fail_commit=True, error=PermissionError("rename refused"))
    with pytest.raises(PermissionError, match="rename refused"):
        save_to({"tag": "new"}, path, storage=storage)
    assert storage.ended == ["commit failed", "aborted"]
    assert path.read_bytes() == before
    assert leftovers(tmp_path, path) == []


def test_a_save_through_the_seam_commits_once(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.safetensors"
    storage = FaultyStorage()
    save_to(old_state(), path, storage=storage)
    assert storage.ended == ["committed"]
    assert classify(path) == "old" and leftovers(tmp_path, path) == []


def test_unsupported_object_deep_in_tree_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.safetensors"
    statevault.save(old_state(), path)
    before = path.read_bytes()
    state = {"tag": "new", "layers": [torch.ones(100_000) for _ in range(4)]}
    state["zzz"] = {"late": [1, 2, {"deep": object()}]}
    with pytest.raises(statevault.UnsupportedObjectError, match=r"^zzz\.late\.2\.deep: "):
        statevault.save(state, path)
    assert path.read_bytes() == before
    assert leftovers(tmp_path, path) == []


def test_save_into_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(statevault.CheckpointNotFoundError, match="does not exist"):
        statevault.save({"x": torch.ones(1)}, tmp_path / "missing" / "ckpt.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_new_file_gets_normal_permissions(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.safetensors"
    statevault.save({"x": torch.ones(1)}, path)
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
