"""A save respects the path it replaces, and says what went wrong in the caller's words.

Symlinks are written through, the replaced file's mode (owner, group) is kept, paths a save
must not replace are refused before anything is written, and every OS error becomes a
``CheckpointWriteError`` (an ``OSError`` with the OS's errno) naming the caller's path, never
the hidden temporary file, with the previous file byte-identical and no temporary left.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import statevault
from helpers.storage import NoWriteStorage
from statevault.engine.temps import TEMP_SUFFIX
from statevault.saving.save import save_to

SRC = str(Path(statevault.__file__).resolve().parents[1])
NOBODY = 65534


def old_state() -> dict[str, torch.Tensor]:
    return {"w": torch.arange(10.0)}


def new_state() -> dict[str, torch.Tensor]:
    return {"w": torch.arange(10.0) + 100}


def snapshot(directory: Path) -> dict[str, bytes | str]:
    """Every entry under ``directory``: file bytes, or what a link/other node is."""
    found: dict[str, bytes | str] = {}
    for path in sorted(directory.rglob("*")):
        key = str(path.relative_to(directory))
        if path.is_symlink():
            found[key] = f"link -> {os.readlink(path)}"
        elif path.is_file():
            found[key] = path.read_bytes()
        else:
            found[key] = stat.filemode(path.lstat().st_mode)
    return found


def save_refused(state: dict[str, torch.Tensor], path: str | os.PathLike[str]) -> None:
    """Save, failing the test if the save gets as far as creating its temporary file."""
    save_to(state, path, storage=NoWriteStorage())


# -- symlinks, modes, owners -------------------------------------------------------------


def test_save_through_a_symlink_replaces_the_file_it_names(tmp_path: Path) -> None:
    run = tmp_path / "run7"
    run.mkdir()
    real = run / "ckpt.safetensors"
    statevault.save(old_state(), real)
    latest = tmp_path / "latest"
    latest.symlink_to("run7/ckpt.safetensors")  # relative, as people make them
    statevault.save(new_state(), latest)
    assert latest.is_symlink() and os.readlink(latest) == "run7/ckpt.safetensors"
    assert torch.equal(statevault.load(real)["w"], new_state()["w"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "run7"]
    assert [p.name for p in run.iterdir()] == ["ckpt.safetensors"]  # no temporary left


def test_a_chain_of_links_and_a_dangling_link_are_followed(tmp_path: Path) -> None:
    (tmp_path / "runs").mkdir()
    target = tmp_path / "runs" / "new.safetensors"  # does not exist yet
    (tmp_path / "b").symlink_to(target)  # absolute
    (tmp_path / "a").symlink_to("b")
    statevault.save(new_state(), tmp_path / "a")
    assert (tmp_path / "a").is_symlink() and (tmp_path / "b").is_symlink()
    assert torch.equal(statevault.load(target)["w"], new_state()["w"])


def test_a_symlink_loop_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    with pytest.raises(statevault.CheckpointWriteError, match="loop") as caught:
        save_refused(new_state(), tmp_path / "a")
    assert caught.value.errno == errno.ELOOP
    assert str(tmp_path / "a") in str(caught.value)


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o604])
def test_the_replaced_files_mode_is_kept(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "ckpt.safetensors"
    statevault.save(old_state(), path)
    path.chmod(mode)
    statevault.save(new_state(), path)
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert torch.equal(statevault.load(path)["w"], new_state()["w"])


def test_mode_is_kept_through_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real.safetensors"
    statevault.save(old_state(), real)
    real.chmod(0o600)
    (tmp_path / "link").symlink_to(real)
    statevault.save(new_state(), tmp_path / "link")
    assert (tmp_path / "link").is_symlink()
    assert stat.S_IMODE(real.lstat().st_mode) == 0o600
    assert torch.equal(statevault.load(real)["w"], new_state()["w"])


@pytest.mark.skipif(os.geteuid() != 0, reason="only root may give a file to another owner")
def test_owner_and_group_are_kept_where_allowed(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.safetensors"
    statevault.save(old_state(), path)
    os.chown(path, NOBODY, NOBODY)
    statevault.save(new_state(), path)
    status = path.stat()
    assert (status.st_uid, status.st_gid) == (NOBODY, NOBODY)


# -- refused before writing ---------------------------------------------------------------


def test_a_directory_is_refused_before_writing(tmp_path: Path) -> None:
    target = tmp_path / "ckpt.safetensors"
    target.mkdir()
    (target / "inside").write_bytes(b"keep")
    before = snapshot(tmp_path)
    with pytest.raises(statevault.CheckpointWriteError, match="is a directory") as caught:
        save_refused(new_state(), target)
    assert caught.value.errno == errno.EISDIR
    assert isinstance(caught.value, OSError)
    assert str(target) in str(caught.value)
    assert snapshot(tmp_path) == before


def test_a_trailing_slash_is_refused(tmp_path: Path) -> None:
    with pytest.raises(statevault.CheckpointWriteError, match="names a directory"):
        save_refused(new_state(), f"{tmp_path}/ckpt/")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def special_node(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Path, str]]:
    kind = request.param
    path = tmp_path / "target"
    if kind == "fifo":
        os.mkfifo(path)
        yield path, "FIFO"
    elif kind == "device":
        path.symlink_to("/dev/null")  # a device node without needing mknod rights
        yield path, "character device"
    else:
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
        try:
            yield path, "socket"
        finally:
            server.close()


@pytest.mark.parametrize("special_node", ["fifo", "device", "socket"], indirect=True)
def test_special_files_are_refused_before_writing(
    tmp_path: Path, special_node: tuple[Path, str]
) -> None:
    path, kind = special_node
    before = snapshot(tmp_path)
    with pytest.raises(statevault.CheckpointWriteError, match=kind) as caught:
        save_refused(new_state(), path)  # a FIFO must not block, /dev/null not be written
    assert str(caught.value).startswith(f"{path}: ")
    assert "regular file" in str(caught.value)
    assert snapshot(tmp_path) == before


def test_empty_path_is_refused_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(statevault.CheckpointWriteError, match="empty path") as caught:
        save_refused(new_state(), "")
    assert caught.value.errno == errno.ENOENT
    assert list(tmp_path.iterdir()) == []


def test_missing_directory_names_path_and_keeps_errno(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "ckpt.safetensors"
    with pytest.raises(OSError, match="does not exist; create it first") as caught:
        save_refused(new_state(), path)
    assert isinstance(caught.value, statevault.CheckpointNotFoundError)
    assert caught.value.errno == errno.ENOENT
    assert str(caught.value).startswith(f"{path}: ")


def test_a_file_as_parent_directory_is_a_write_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"x")
    path = tmp_path / "file" / "ckpt.safetensors"
    with pytest.raises(statevault.CheckpointWriteError) as caught:
        save_refused(new_state(), path)
    assert caught.value.errno == errno.ENOTDIR
    assert isinstance(caught.value.__cause__, NotADirectoryError)
    assert str(caught.value).startswith(f"{path}: ")


# -- OS errors while writing --------------------------------------------------------------


def assert_nothing_lost(directory: Path, path: Path, before: bytes) -> None:
    assert path.read_bytes() == before
    assert not [p for p in directory.iterdir() if p.name.endswith(TEMP_SUFFIX)]


def assert_names_user_path(error: BaseException, path: Path) -> None:
    message = str(error)
    assert message.startswith(f"{path}: "), message
    assert TEMP_SUFFIX not in message and ".ckpt.safetensors." not in message, message


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 5 MiB tmpfs mounted under tmp_path (needs root and mount rights; else skipped)."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(
            f"cannot mount a small tmpfs here ({done.stderr.strip()}); the injected "
            "ENOSPC test covers the same path"
        )
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def test_disk_full_on_a_real_small_tmpfs(small_tmpfs: Path) -> None:
    path = small_tmpfs / "ckpt.safetensors"
    statevault.save(old_state(), path)
    before = path.read_bytes()
    with pytest.raises(statevault.CheckpointWriteError, match="No space left") as caught:
        statevault.save({"big": torch.ones(2_000_000)}, path)  # 8 MB onto 5 MiB
    assert caught.value.errno == errno.ENOSPC
    assert isinstance(caught.value.__cause__, OSError)
    assert caught.value.__cause__.errno == errno.ENOSPC
    assert_names_user_path(caught.value, path)
    assert_nothing_lost(small_tmpfs, path, before)
    statevault.save(new_state(), path)  # the space came back with the temporary
    assert torch.equal(statevault.load(path)["w"], new_state()["w"])


@pytest.mark.parametrize("where", ["small runs", "large chunks", "header", "fsync"])
def test_injected_os_errors_name_the_users_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    path = tmp_path / "ckpt.safetensors"
    statevault.save(old_state(), path)
    before = path.read_bytes()
    state: dict[str, Any] = {"w": torch.ones(1000)}
    if where == "large chunks":
        state = {"w": torch.ones(1_000_000)}
    seam = "fsync" if where == "fsync" else "pwritev"
    real_pwritev = os.pwritev

    def fail(*args: Any) -> int:
        if where == "header" and args[2] != 0:  # data lands after the header; it is last
            return real_pwritev(*args)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    # The lowest seam: the system call itself, under the local storage's error translation.
    monkeypatch.setattr(os, seam, fail)
    with pytest.raises(OSError) as caught:
        statevault.save(state, path)
    monkeypatch.undo()
    assert isinstance(caught.value, statevault.CheckpointWriteError)
    assert caught.value.errno == errno.ENOSPC
    assert "free space" in str(caught.value)
    assert_names_user_path(caught.value, path)
    assert_nothing_lost(tmp_path, path, before)


def test_failed_rename_is_a_write_error_and_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ckpt.safetensors"
    statevault.save(old_state(), path)
    before = path.read_bytes()

    def busy(source: object, destination: object) -> None:
        raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), str(source))

    monkeypatch.setattr(os, "replace", busy)
    with pytest.raises(statevault.CheckpointWriteError) as caught:
        statevault.save(new_state(), path)
    monkeypatch.undo()
    assert caught.value.errno == errno.EBUSY
    assert_names_user_path(caught.value, path)
    assert_nothing_lost(tmp_path, path, before)


# -- as an unprivileged user: permission bits apply ---------------------------------------

UNPRIVILEGED = textwrap.dedent(
    """
    import errno, json, os, sys, torch, statevault
    import statevault.saving.save  # the package imports lazily: load it before dropping privileges
    cases = {}
    # Opened while still root: the test's tmp_path (0700, root's) is not reachable for nobody.
    directories = {"read_only_file": os.open(sys.argv[1], os.O_RDONLY),
                   "read_only_dir": os.open(sys.argv[2], os.O_RDONLY)}
    if os.geteuid() == 0:
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
    for name, path in [("read_only_file", "ro.safetensors"), ("read_only_dir", "new.safetensors")]:
        os.fchdir(directories[name])
        try:
            statevault.save({"w": torch.zeros(4)}, path)
            cases[name] = {"saved": True}
        except OSError as exc:
            cases[name] = {
                "type": type(exc).__name__, "errno": exc.errno, "message": str(exc),
                "cause": type(exc.__cause__).__name__,
            }
    print(json.dumps(cases))
    """
)


def test_unwritable_file_and_directory_are_refused_as_unprivileged_user(tmp_path: Path) -> None:
    rw, ro = tmp_path / "rw", tmp_path / "ro"
    rw.mkdir()
    ro.mkdir()
    read_only = rw / "ro.safetensors"
    statevault.save(old_state(), read_only)
    before = read_only.read_bytes()
    read_only.chmod(0o444)
    rw.chmod(0o777)  # the directory is writable: only the file's own mode protects it
    ro.chmod(0o555)
    if os.geteuid() == 0:
        os.chown(read_only, 0, 0)
    elif os.access(read_only, os.W_OK):
        pytest.skip("cannot drop privileges and the file stays writable for this user")
    done = subprocess.run(
        [sys.executable, "-c", UNPRIVILEGED, str(rw), str(ro)],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=SRC),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    cases = json.loads(done.stdout)
    file_case, dir_case = cases["read_only_file"], cases["read_only_dir"]
    assert file_case["type"] == "CheckpointWriteError", file_case
    assert file_case["errno"] == errno.EACCES and file_case["cause"] == "PermissionError"
    assert file_case["message"].startswith("ro.safetensors: cannot be written")
    assert "chmod u+w" in file_case["message"]
    assert dir_case["type"] == "CheckpointWriteError", dir_case
    assert dir_case["errno"] == errno.EACCES
    assert dir_case["message"].startswith("new.safetensors: cannot save: Permission denied")
    assert TEMP_SUFFIX not in dir_case["message"]
    assert read_only.read_bytes() == before
    assert sorted(p.name for p in rw.iterdir()) == ["ro.safetensors"]
    assert list(ro.iterdir()) == []
