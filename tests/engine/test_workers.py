"""The engine's kept read threads: results in order, the first failure stops the rest, no
deadlock when every helper is busy, and a forked child gets helpers of its own."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from statevault.engine import tuning, workers

WAIT = 10.0  # seconds a test waits for a thread before calling it hung


def test_results_come_back_in_task_order_from_several_threads() -> None:
    names: list[str] = []
    both = threading.Barrier(2, timeout=WAIT)  # the first two tasks run at the same time

    def task(index: int) -> Callable[[], int]:
        def run() -> int:
            names.append(threading.current_thread().name)
            if index < 2:
                both.wait()
            time.sleep(0.001 * (index % 3))  # finish out of order
            return index * index

        return run

    assert workers.run([task(i) for i in range(12)], 3) == [i * i for i in range(12)]
    assert len(set(names)) >= 2
    assert set(names) <= {threading.current_thread().name} | {
        n for n in names if n.startswith("statevault-read")
    }


@pytest.mark.parametrize("error", [ValueError("bad block"), KeyboardInterrupt()])
def test_the_first_failure_is_raised_and_no_further_task_starts(error: BaseException) -> None:
    stop = threading.Event()
    ran: list[int] = []

    def fail() -> None:
        raise error

    def later(index: int) -> Callable[[], None]:
        def run() -> None:
            assert stop.wait(WAIT)  # the failure has happened before any of these ends
            ran.append(index)

        return run

    with pytest.raises(type(error)) as caught:
        workers.run([fail, *[later(i) for i in range(10)]], 2, stop=stop)
    assert caught.value is error
    assert stop.is_set()
    assert len(ran) <= 1  # only a task a helper took before the failure


@pytest.fixture
def one_helper(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A fresh pool of a single helper thread, so that one busy task occupies all of it."""
    monkeypatch.setattr(tuning, "MAX_THREADS", 1)
    monkeypatch.setattr(tuning, "REMOTE_THREADS", 1)
    saved = list(workers._helpers)
    workers._helpers.clear()
    yield
    for pool in workers._helpers:
        pool.shutdown(wait=False, cancel_futures=True)  # a deadlocked one must not hang here
    workers._helpers[:] = saved


@pytest.mark.usefixtures("one_helper")
def test_a_call_from_inside_a_task_runs_its_tasks_itself_when_no_helper_is_free() -> None:
    def outer(index: int) -> Callable[[], list[int]]:
        def run() -> list[int]:
            return workers.run([lambda j=j: index * 10 + j for j in range(4)], 4)

        return run

    done: list[list[list[int]]] = []
    thread = threading.Thread(
        target=lambda: done.append(workers.run([outer(0), outer(1)], 2)), daemon=True
    )
    thread.start()
    thread.join(WAIT)
    assert not thread.is_alive(), "workers.run deadlocked waiting for a busy helper"
    assert done == [[[0, 1, 2, 3], [10, 11, 12, 13]]]


def test_a_forked_child_starts_helpers_of_its_own() -> None:
    workers.run([lambda: None, lambda: None], 2)  # the parent's helpers exist now
    pid = os.fork()
    if pid == 0:  # the child: two tasks that can only end together, so two threads needed
        code = 1
        try:
            both = threading.Barrier(2, timeout=WAIT)
            workers.run([both.wait, both.wait], 2)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
