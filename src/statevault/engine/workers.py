"""Running a call's read tasks on several threads without starting threads for each call.

A load used to start a thread pool and join it again on every call. Starting a thread
returns only once the new thread has run, so on a busy machine each start waits for a
scheduler slot: starting and joining a pool of 2 threads around 40 empty tasks took 0.9 ms
at best and 10 ms at the median on the shared 2-core machine, against a warm 183 MiB load
of ~15 ms (``python -m bench.workers_ab`` compares whole loads). The helpers here are started once per process, on first use, and kept idle
between calls (``ThreadPoolExecutor`` starts them as needed and joins them at exit).

The calling thread works too: ``run`` hands ``threads - 1`` helpers one shared queue of
tasks and takes tasks from it itself. So a call never waits for a helper to be free: when
all are busy (another thread is loading, or ``run`` was called from inside a task), the
caller runs every task alone and the helpers that never started are cancelled. A forked
child gets its own helpers (the parent's threads do not exist there).

May import: ``statevault.engine.tuning``. Imported by the engine's ``reader`` and ``scan``.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from statevault.engine import tuning

T = TypeVar("T")

_lock = threading.Lock()
_helpers: list[ThreadPoolExecutor] = []  # zero or one pool; a list so no ``global`` is needed
_fork_hook: list[bool] = []


def _forget_after_fork() -> None:
    """In a forked child: the parent's helper threads are not there, start new ones."""
    _helpers.clear()


def _pool() -> ThreadPoolExecutor:
    with _lock:
        if not _helpers:
            if not _fork_hook and hasattr(os, "register_at_fork"):
                os.register_at_fork(after_in_child=_forget_after_fork)
                _fork_hook.append(True)
            _helpers.append(
                ThreadPoolExecutor(  # threads start only as calls need them
                    max_workers=max(tuning.MAX_THREADS, tuning.REMOTE_THREADS),
                    thread_name_prefix="statevault-read",
                )
            )
        return _helpers[0]


def run(
    tasks: Sequence[Callable[[], T]], threads: int, *, stop: threading.Event | None = None
) -> list[T]:
    """Run ``tasks`` on ``threads`` threads (this one included); their results in task order.

    Tasks are started in the order given (put the biggest first). The first exception
    raised by a task sets ``stop`` (tasks that look at it end early), no further task
    starts, and it is raised here once every running task has ended; so is an interrupt of
    the calling thread.
    """
    stop = threading.Event() if stop is None else stop
    results: list[T | None] = [None] * len(tasks)
    queue = deque(range(len(tasks)))  # popleft is atomic: each task is taken exactly once
    failures: list[BaseException] = []

    def work() -> None:
        while not stop.is_set():
            try:
                index = queue.popleft()
            except IndexError:
                return
            try:
                results[index] = tasks[index]()
            except BaseException as exc:  # handed to the caller, which raises it
                failures.append(exc)
                stop.set()
                return

    helpers: list[Future[None]] = []
    if threads > 1 and len(tasks) > 1:
        pool = _pool()
        helpers = [pool.submit(work) for _ in range(min(threads, len(tasks)) - 1)]
    try:
        work()
    except BaseException:  # an interrupt between tasks: stop the helpers too
        stop.set()
        raise
    finally:
        try:
            for helper in helpers:
                if not helper.cancel():  # started: wait for it (it ends after its current task)
                    helper.result()
        except BaseException:  # interrupted while waiting: no helper starts another task
            stop.set()
            raise
    if failures:
        raise failures[0]
    return results  # type: ignore[return-value]  # every index was filled: no failure
