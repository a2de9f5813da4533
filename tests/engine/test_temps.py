"""Temporary files of killed saves are named for their writer and removed by a later save.

A save removes the leftovers of writers of this host that are gone (pid not alive, a
zombie, or a pid reused by a process started after the file was last written) and never
touches a save in flight (another live process, another thread) or another host's files.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import statevault
from helpers.samples import write_sharded
from helpers.storage import FaultyStorage
from statevault.cli import main
from statevault.engine import temps
from statevault.engine.temps import TEMP_SUFFIX
from statevault.saving.save import save_to

SRC = str(Path(statevault.__file__).resolve().parents[1])
TESTS = str(Path(__file__).resolve().parents[1])

# Saves a 4 MB tensor (written in chunks) and stops for good once the first chunk is in the
# temporary file, so the parent kills it mid-save at a known point, whatever the machine's load.
CHILD = textwrap.dedent(
    """
    import sys, threading, torch
    from helpers.storage import FaultyStorage
    from statevault.saving.save import save_to

    def stop(number):
        print("mid-save", flush=True)
        threading.Event().wait()  # until SIGKILL

    save_to({"w": torch.ones(1_000_000)}, sys.argv[1], storage=FaultyStorage(after_write=stop))
    """
)


def kill_mid_save(path: Path) -> int:
    """Run a real save of ``path`` in a child process, SIGKILL it mid-save; its pid."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, TESTS])),
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    child.send_signal(signal.SIGKILL)
    _, error = child.communicate(timeout=60)  # reaps it: the pid is gone, not a zombie
    assert line == "mid-save\n", error
    assert child.returncode == -signal.SIGKILL
    return child.pid


def temp_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.endswith(TEMP_SUFFIX))


@pytest.fixture
def live_process() -> Iterator[int]:
    """The pid of a process that stays alive for the test (a writer still saving)."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        yield process.pid
    finally:
        process.kill()
        process.wait()


def fake_temporary(
    directory: Path, pid: int, writer: str | None = None, token: str = "0123456789ab"
) -> Path:
    """A temporary file as the save of process ``pid`` on host ``writer`` names it."""
    name = f".ckpt.safetensors.{writer or temps.writer_token()}.{pid}.{token}{TEMP_SUFFIX}"
    path = directory / name
    path.write_bytes(b"partial")
    return path


def test_temporary_name_identifies_host_and_pid(tmp_path: Path) -> None:
    name = temps.temp_name("ckpt.v1.safetensors")
    assert name.startswith(".ckpt.v1.safetensors.") and name.endswith(TEMP_SUFFIX)
    (tmp_path / name).write_bytes(b"")
    (found,) = temps.temporaries(tmp_path)
    assert (found.writer, found.pid) == (temps.writer_token(), os.getpid())
    assert "." not in found.writer
    long_name = temps.temp_name("x" * 255)  # still a valid file name
    assert len(long_name.encode()) <= 255
    (tmp_path / long_name).write_bytes(b"")


def test_a_save_removes_the_leftover_of_a_killed_writer_only(
    tmp_path: Path, live_process: int
) -> None:
    path = tmp_path / "ckpt.safetensors"
    statevault.save({"w": torch.zeros(3)}, path)
    before = path.read_bytes()
    dead_pid = kill_mid_save(path)
    (leftover,) = temp_files(tmp_path)
    assert f".{dead_pid}." in leftover.name and leftover.stat().st_size > 1 << 20
    assert path.read_bytes() == before  # the killed save changed nothing
    in_flight = fake_temporary(tmp_path, live_process)  # another process, still writing
    ours = fake_temporary(tmp_path, os.getpid())  # another thread of this process
    elsewhere = fake_temporary(tmp_path, dead_pid, writer="otherhost-4026531836")
    assert temps.stale_temporaries(tmp_path) == [leftover]

    statevault.save({"w": torch.ones(3)}, tmp_path / "other.safetensors")  # same directory
    assert temp_files(tmp_path) == sorted([in_flight, ours, elsewhere])
    assert temps.stale_temporaries(tmp_path) == []
    assert path.read_bytes() == before


def test_a_pid_reused_after_the_file_was_written_is_not_its_writer(
    tmp_path: Path, live_process: int
) -> None:
    reused = fake_temporary(tmp_path, live_process)
    an_hour_ago = time.time() - 3600
    os.utime(reused, (an_hour_ago, an_hour_ago))  # written long before that process started
    recent = fake_temporary(tmp_path, live_process, token="ba9876543210")  # written just now
    # Our own pid, in a file written before this process started: a previous owner's.
    before_us = fake_temporary(tmp_path, os.getpid(), token="0000000000aa")
    os.utime(before_us, (an_hour_ago, an_hour_ago))
    assert temps.stale_temporaries(tmp_path) == sorted([reused, before_us])
    assert sorted(t.path for t in temps.temporaries(tmp_path)) == sorted(
        [reused, recent, before_us]
    )


def test_a_zombie_writer_is_gone(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 60
        while temps._process_start(child.pid) is not None:  # wait until it is a zombie
            state = temps._process_start(child.pid)
            if state is not None and state[0] == "Z":
                break
            assert time.monotonic() < deadline
            time.sleep(0.01)
        leftover = fake_temporary(tmp_path, child.pid)
        assert temps.stale_temporaries(tmp_path) == [leftover]
    finally:
        child.wait()


def test_a_save_in_flight_on_another_thread_survives_a_save_beside_it(tmp_path: Path) -> None:
    reached, release = threading.Event(), threading.Event()

    def pause_after_first_chunk(number: int) -> None:
        if number == 1:
            reached.set()
            release.wait(60)

    paused = FaultyStorage(after_write=pause_after_first_chunk)
    slow_path = tmp_path / "slow.safetensors"
    errors: list[BaseException] = []

    def slow_save() -> None:
        try:
            save_to({"w": torch.ones(1_000_000)}, slow_path, storage=paused)
        except BaseException as exc:
            errors.append(exc)

    saver = threading.Thread(target=slow_save)
    saver.start()
    try:
        assert reached.wait(60)
        (in_flight,) = temp_files(tmp_path)
        statevault.save({"w": torch.zeros(3)}, tmp_path / "quick.safetensors")
        assert temp_files(tmp_path) == [in_flight]
    finally:
        release.set()
        saver.join()
    assert errors == []
    assert torch.equal(statevault.load(slow_path)["w"], torch.ones(1_000_000))
    assert temp_files(tmp_path) == []


def test_inspect_and_verify_of_a_directory_mention_leftovers(tmp_path: Path) -> None:
    directory = write_sharded(tmp_path / "sharded", {f"t{i}": torch.ones(4) * i for i in range(4)})
    before = statevault.verify(directory).notes  # plain shards: "no checksums" notes
    dead_pid = kill_mid_save(directory / "model-00001-of-00002.safetensors")
    (leftover,) = temp_files(directory)
    report = statevault.verify(directory)
    assert report.ok and report.notes[: len(before)] == before
    (note,) = report.notes[len(before) :]
    assert leftover.name in note and str(dead_pid) in note and "killed save" in note
    assert leftover.name in str(report)
    summary = statevault.inspect(directory)
    assert summary.notes == (note,)
    assert json.loads(json.dumps(summary.to_dict()))["notes"] == [note]
    shown = CliRunner().invoke(main, ["inspect", str(directory)])  # a person sees it too
    assert shown.exit_code == 0 and leftover.name in shown.output and "notes" in shown.output
