"""Timing and memory probes used inside a case's subprocess.

Peak memory is sampled from ``/proc/self/status``: ``RssAnon`` is memory the process owns
(heap, anonymous mmaps), ``RssFile`` is file-backed pages mapped in (page cache, shared with
the kernel and every other reader of the file). An mmap-based loader shows up in the second.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

SAMPLE_SECONDS = 0.001


def rss() -> tuple[int, int]:
    """Current (anonymous, file-backed) resident bytes of this process."""
    anon = file = 0
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                anon = int(line.split()[1]) * 1024
            elif line.startswith("RssFile:"):
                file = int(line.split()[1]) * 1024
    return anon, file


@dataclass(frozen=True)
class Peak:
    anon: int  # peak RssAnon above the level just before the operation
    file: int  # same for RssFile


def peak_during(operation: Callable[[], object]) -> Peak:
    """Run ``operation`` once while a thread samples RSS every millisecond."""
    base_anon, base_file = rss()
    high = [base_anon, base_file]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            anon, file = rss()
            high[0], high[1] = max(high[0], anon), max(high[1], file)
            time.sleep(SAMPLE_SECONDS)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        result = operation()
        anon, file = rss()  # the state right at the end counts too (e.g. tensors just returned)
        high[0], high[1] = max(high[0], anon), max(high[1], file)
        del result
    finally:
        done.set()
        thread.join()
    return Peak(anon=max(0, high[0] - base_anon), file=max(0, high[1] - base_file))


def timed(operation: Callable[[], object]) -> float:
    start = time.perf_counter()
    result = operation()
    elapsed = time.perf_counter() - start
    del result
    return elapsed
