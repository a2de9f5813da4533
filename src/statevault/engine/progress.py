"""The progress hook long operations report to (the CLI draws it as a bar; tests count it)."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """Receives the size of the work once, then increments as bytes are processed.

    ``advance`` may be called from worker threads.
    """

    def start(self, total: int) -> None: ...

    def advance(self, nbytes: int) -> None: ...
