"""One writer per run on object storage: a lease object created with a conditional create.

S3 has no ``flock``. The writer creates ``RUN/.statevault-manager.lock`` with
``If-None-Match: *`` (``Storage.begin(name, exclusive=True)``), holding its host, pid, start
time and a random token; of two managers starting at once exactly one creates it, and the
other gets ``ManagerLockedError`` naming the holder. ``close()`` removes the lease if it
still holds this manager's token.

Nothing drops a lease when its process dies, so a killed run leaves one behind. It is taken
over without asking when it names this host and a pid that no longer runs there (the common
case: the job restarted on the same machine). Any other lease is broken only on request,
``CheckpointManager(url, break_lock=True)``, after making sure its run is gone: a lease has
no expiry, because a slow upload cannot prove it is still alive without a heartbeat writer,
and a broken lease of a live run lets two writers in (the commit marker still keeps them
from committing one step twice, but their retention passes would both delete).

Imported by ``statevault.manager.object_store`` only.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import time
from typing import Any

from statevault.engine.storage import Storage
from statevault.errors import DestinationExistsError, ManagerLockedError, StateVaultError

logger = logging.getLogger("statevault.manager")


class Lease:
    """The lease object ``name`` in ``storage``, held from :meth:`acquire` to :meth:`release`."""

    def __init__(self, storage: Storage, name: str, run: str) -> None:
        self.storage, self.name, self.run = storage, name, run
        self.token = secrets.token_hex(8)
        self.held = False

    def acquire(self, *, break_lock: bool) -> None:
        try:
            self._create()
            return
        except DestinationExistsError:
            holder = self.holder()
        if not (break_lock or _dead_here(holder)):
            raise ManagerLockedError(
                f"{self.run}: another CheckpointManager manages this run ({_describe(holder)}, "
                f"lease {self.name}); close it (or wait for that run to end) before opening a "
                "second one, or open this one with read_only=True to only list and restore. "
                "If that run was killed on another machine, open with break_lock=True"
            )
        logger.warning("%s: breaking the lease of %s", self.run, _describe(holder))
        self.storage.remove(self.name)
        try:
            self._create()
        except DestinationExistsError:  # another manager broke it and took it first
            raise ManagerLockedError(
                f"{self.run}: another CheckpointManager took the lease first "
                f"({_describe(self.holder())})"
            ) from None

    def _create(self) -> None:
        record = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "token": self.token,
        }
        pending = self.storage.begin(self.name, exclusive=True)
        try:
            pending.write(0, [memoryview(json.dumps(record).encode())])
            pending.commit(durable=True)
        except BaseException:
            pending.abort()
            raise
        self.held = True

    def holder(self) -> dict[str, Any]:
        """What the lease says of its holder ({} when it is gone or unreadable)."""
        try:
            with self.storage.open(self.name) as stored:
                data = json.loads(stored.read(4096, 0))
        except (StateVaultError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def release(self) -> None:
        """Remove the lease if it is still this manager's (not one that broke it since)."""
        if not self.held:
            return
        self.held = False
        try:
            if self.holder().get("token") == self.token:
                self.storage.remove(self.name)
        except StateVaultError as exc:
            logger.warning("%s: could not remove the lease %s: %s", self.run, self.name, exc)


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "holder unknown"
    return f"pid {holder.get('pid')} on host {holder.get('host')}, since {holder.get('since')}"


def _dead_here(holder: dict[str, Any]) -> bool:
    """Whether the lease names this host and a pid that no longer runs here."""
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or type(pid) is not int or pid <= 0:
        return False
    if pid == os.getpid():
        return False  # this process: another manager of it holds the run
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    return False
