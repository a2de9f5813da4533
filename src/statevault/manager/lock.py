"""One manager per checkpoint directory: an exclusive ``flock`` on a lock file inside it.

The lock file holds the holder's pid, host and start time, so a second manager's error
names who holds the directory. The kernel drops the lock when its process dies (even by
SIGKILL), so a crashed run never leaves a stale lock; the text it leaves behind is simply
overwritten by the next holder. ``flock`` is advisory and local: on network file systems
that do not forward it, two hosts are not kept apart (documented in docs/manager.md).

Imported by ``statevault.manager.manager`` only.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

from statevault.errors import ManagerLockedError
from statevault.manager.layout import LOCK_FILE, os_error


class DirectoryLock:
    """Held from :meth:`acquire` until :meth:`release` (or the process ends)."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise os_error(exc, "creating the manager's lock file", self.path) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "unknown"
            os.close(fd)
            raise ManagerLockedError(
                f"{self.path.parent}: another CheckpointManager manages this directory "
                f"({holder}); close it (or wait for that run to end) before opening a second "
                "one, or open this one with read_only=True to only list and restore"
            ) from None
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        text = f"pid {os.getpid()} on host {socket.gethostname()}, since {stamp}\n"
        os.ftruncate(fd, 0)
        os.pwrite(fd, text.encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the last descriptor drops the flock
