"""Async saves: a snapshot now, the write later on one background thread, failures kept.

:meth:`BackgroundSaves.submit` takes a staging slot (blocking while ``slots`` saves are in
flight: back-pressure), snapshots the state into it (snapshot.py) and queues the write on a
single worker thread, so steps commit in the order they were saved. A failure in the
background is kept and raised by the next :meth:`raise_failure` (the manager calls it on
``save``/``wait``/``close``), never dropped. The worker is an ordinary
``ThreadPoolExecutor`` thread, which Python joins at interpreter exit: queued saves finish
before the process ends.

Imported by ``statevault.manager.manager`` only.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Callable
from typing import Any

import torch

from statevault.manager.snapshot import StagingArea

logger = logging.getLogger("statevault.manager")
Write = Callable[[int, Any], None]


class BackgroundSaves:
    """At most ``slots`` snapshots in flight, written one after another by ``write``."""

    def __init__(self, slots: int, *, pin: bool | None = None) -> None:
        self.staging = StagingArea(slots, pin=pin)
        self._executor = concurrent.futures.ThreadPoolExecutor(1, "statevault-save")
        self._lock = threading.Lock()
        self._in_flight: dict[int, concurrent.futures.Future[None]] = {}
        self._failures: list[BaseException] = []

    def submit(self, step: int, state: Any, write: Write) -> None:
        """Snapshot ``state`` (returns once it is copied) and queue ``write(step, snapshot)``."""
        buffer = self.staging.acquire()
        try:
            staged, buffer = self.staging.stage(state, buffer)
        except BaseException:
            self.staging.release(buffer)
            raise
        with self._lock:
            self._in_flight[step] = self._executor.submit(self._run, step, staged, buffer, write)

    def _run(self, step: int, staged: Any, buffer: torch.Tensor, write: Write) -> None:
        try:
            write(step, staged)
        except BaseException as exc:
            logger.error("async save of step %d failed: %s", step, exc)
            with self._lock:
                self._failures.append(exc)
        finally:
            del staged  # the views into the buffer go before the buffer is reused
            self.staging.release(buffer)
            with self._lock:
                self._in_flight.pop(step, None)

    def steps(self) -> list[int]:
        """The steps in flight, oldest first."""
        with self._lock:
            return sorted(self._in_flight)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the saves in flight (up to ``timeout`` s); True when none is left."""
        with self._lock:
            futures = list(self._in_flight.values())
        _, pending = concurrent.futures.wait(futures, timeout)
        return not pending

    def raise_failure(self) -> None:
        """Raise the first background failure not raised yet (later ones are logged)."""
        with self._lock:
            failures, self._failures = self._failures, []
        if failures:
            for later in failures[1:]:
                logger.error("another async save failed too: %s", later)
            raise failures[0]

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)
