"""What every command shares: consoles, progress bars, JSON output, sizes, exit codes.

Exit codes follow ``diff``: 0 all is well / equal, 1 a finding (damage, a difference),
2 the command could not do its job (missing file, unreadable input, bad option).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

EXIT_OK = 0
EXIT_FINDING = 1
EXIT_ERROR = 2
PIPED_WIDTH = 120  # rich assumes 80 columns off a terminal, which wraps long tensor names


def stdout_console() -> Console:
    """A console on stdout; plain text (no colour codes) when piped."""
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=PIPED_WIDTH)
    return console


def print_report(text: str, *, headline_style: str) -> None:
    """A report's text on stdout, its first line (the verdict) in ``headline_style``."""
    console = stdout_console()
    headline, *rest = text.splitlines() or [""]
    console.print(f"[{headline_style}]{escape(headline)}[/]")
    for line in rest:
        console.print(escape(line))


def emit_json(data: Any) -> None:
    """Machine-readable output: strict JSON (no NaN), one document on stdout."""
    click.echo(json.dumps(data, indent=2, allow_nan=False, ensure_ascii=False))


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


class _Bar:
    """Adapts a rich progress bar to the library's ``Progress`` hook (thread-safe)."""

    def __init__(self, progress: Progress, description: str) -> None:
        self._progress = progress
        self._task = progress.add_task(description, total=None)
        self._lock = threading.Lock()

    def start(self, total: int) -> None:
        with self._lock:
            self._progress.update(self._task, total=total)

    def advance(self, nbytes: int) -> None:
        with self._lock:
            self._progress.advance(self._task, nbytes)


@contextmanager
def progress_bar(description: str, *, console: Console | None = None) -> Iterator[_Bar | None]:
    """A byte-counting bar on stderr when it is a terminal; ``None`` (quiet) when piped."""
    console = console or Console(stderr=True)
    if not console.is_terminal:
        yield None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        yield _Bar(progress, description)
