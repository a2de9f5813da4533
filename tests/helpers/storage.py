"""Storages that fail, pause or watch on purpose: fault injection through the storage seam.

Each wraps the real local storage and changes one step of the save protocol (``begin`` ->
``write``... -> ``commit`` | ``abort``), so a test exercises the writer exactly as a real
failing disk would, without patching private names. Hand one to
``statevault.saving.save.save_to(obj, path, storage=...)``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from statevault.engine.memory import ByteBuffer
from statevault.engine.storage import (
    LOCAL_STORAGE,
    Name,
    PendingObject,
    Storage,
    StoredObject,
)

WriteHook = Callable[[int], None]  # gets the 1-based number of the write; may raise or block


class FaultyStorage(Storage):
    """Local storage whose ``fail_write``-th write or whose commit raises ``error``.

    ``before_write``/``after_write`` run around every write (to slow it down or to stop a
    save at a known point). It records which thread made each write, and how each pending
    object ended: ``ended`` gets "committed", "commit failed" or "aborted".
    """

    def __init__(
        self,
        *,
        fail_write: int | None = None,
        fail_commit: bool = False,
        error: BaseException | None = None,
        before_write: WriteHook | None = None,
        after_write: WriteHook | None = None,
        inner: Storage = LOCAL_STORAGE,
    ) -> None:
        self.inner = inner
        self.fail_write = fail_write
        self.fail_commit = fail_commit
        self.error = error if error is not None else OSError("injected failure")
        self.before_write = before_write
        self.after_write = after_write
        self.write_threads: list[str] = []
        self.ended: list[str] = []
        self._lock = threading.Lock()

    def open(self, name: Name) -> StoredObject:
        return self.inner.open(name)

    def begin(self, name: Name, *, exclusive: bool = False) -> PendingObject:
        return _FaultyPending(self, self.inner.begin(name, exclusive=exclusive))

    def exists(self, name: Name) -> bool:
        return self.inner.exists(name)

    def remove(self, name: Name) -> None:
        self.inner.remove(name)

    def list_names(self, directory: Name) -> list[str]:
        return self.inner.list_names(directory)

    def list_tree(self, directory: Name) -> list[str]:
        return self.inner.list_tree(directory)

    def abort_uploads(self, directory: Name) -> list[str]:
        return self.inner.abort_uploads(directory)

    def _count_write(self) -> int:
        with self._lock:
            self.write_threads.append(threading.current_thread().name)
            return len(self.write_threads)


class _FaultyPending(PendingObject):
    def __init__(self, storage: FaultyStorage, inner: PendingObject) -> None:
        self.storage = storage
        self.inner = inner

    def write(self, offset: int, buffers: list[ByteBuffer]) -> None:
        storage = self.storage
        number = storage._count_write()
        if storage.before_write is not None:
            storage.before_write(number)
        if number == storage.fail_write:
            raise storage.error
        self.inner.write(offset, buffers)
        if storage.after_write is not None:
            storage.after_write(number)

    def commit(self, *, durable: bool) -> None:
        if self.storage.fail_commit:
            self.storage.ended.append("commit failed")
            raise self.storage.error
        self.inner.commit(durable=durable)
        self.storage.ended.append("committed")

    def abort(self) -> None:
        self.inner.abort()
        self.storage.ended.append("aborted")


class NoWriteStorage(FaultyStorage):
    """Fails the test if a save gets as far as creating its pending object (a temp file)."""

    def begin(self, name: Name, *, exclusive: bool = False) -> PendingObject:
        pending = self.inner.begin(name, exclusive=exclusive)
        pending.abort()
        raise AssertionError(f"save went on to create a temporary file for {name!r}")
