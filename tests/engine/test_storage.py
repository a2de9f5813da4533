"""The local storage keeps the storage interface's contract: atomic commit, abort, listing."""

from __future__ import annotations

from pathlib import Path

import pytest

from statevault.engine.storage import LocalStorage
from statevault.errors import CheckpointNotFoundError, DestinationExistsError, StateVaultError


def test_a_pending_object_is_invisible_until_commit(tmp_path: Path) -> None:
    storage = LocalStorage()
    name = tmp_path / "a.bin"
    pending = storage.begin(name)
    pending.write(3, [memoryview(b"defg")])  # positional: the head is written last
    pending.write(0, [memoryview(b"a"), memoryview(b"bc")])
    assert not storage.exists(name) and storage.list_names(tmp_path) == []
    pending.commit(durable=True)
    assert storage.exists(name) and storage.list_names(tmp_path) == ["a.bin"]
    with storage.open(name) as stored:
        assert stored.size == 7 and stored.read(100, 2) == b"cdefg"
        buffer = bytearray(4)
        assert stored.readv([memoryview(buffer)], 1) == 4 and buffer == b"bcde"
    pending.abort()  # after a commit: nothing to remove, the object stays
    assert name.read_bytes() == b"abcdefg"
    with pytest.raises(StateVaultError, match="already committed"):
        pending.commit(durable=False)


def test_abort_keeps_the_old_object_and_leaves_nothing(tmp_path: Path) -> None:
    storage = LocalStorage()
    name = tmp_path / "a.bin"
    name.write_bytes(b"old")
    pending = storage.begin(name)
    pending.write(0, [memoryview(b"new data")])
    pending.abort()
    pending.abort()  # twice is fine
    assert name.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]
    storage.remove(name)
    storage.remove(name)  # absent is not an error
    assert not storage.exists(name) and storage.list_names(tmp_path) == []
    with pytest.raises(CheckpointNotFoundError, match="no such checkpoint file"):
        storage.open(name)


def test_an_exclusive_commit_creates_only_where_nothing_is(tmp_path: Path) -> None:
    storage = LocalStorage()
    name = tmp_path / "COMMITTED"
    first, second = storage.begin(name, exclusive=True), storage.begin(name, exclusive=True)
    first.write(0, [memoryview(b"one")])
    second.write(0, [memoryview(b"two")])
    first.commit(durable=True)
    with pytest.raises(DestinationExistsError, match="another writer created it first"):
        second.commit(durable=True)
    second.abort()
    assert name.read_bytes() == b"one" and storage.list_names(tmp_path) == ["COMMITTED"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["COMMITTED"]  # no temporary left


def test_list_tree_names_every_committed_file_below_a_directory(tmp_path: Path) -> None:
    storage = LocalStorage()
    (tmp_path / "step-1" / "deeper").mkdir(parents=True)
    for name in ("x", "step-1/y", "step-1/deeper/z"):
        (tmp_path / name).write_bytes(b"1")
    pending = storage.begin(tmp_path / "step-1" / "pending")
    pending.write(0, [memoryview(b"not yet")])
    assert storage.list_tree(tmp_path) == ["step-1/deeper/z", "step-1/y", "x"]
    assert storage.list_tree(tmp_path / "none") == []
    assert storage.abort_uploads(tmp_path) == []  # local writes leave temporaries, not uploads
    pending.abort()
