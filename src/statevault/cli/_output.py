"""What every command shares: consoles, progress bars, JSON output, sizes, exit codes.

Exit codes follow ``diff``: 0 all is well / equal, 1 a finding about a real checkpoint
(damage, a difference), 2 the command could not do its job (not a checkpoint, missing file,
refused input, bad option, existing destination), 130 interrupted (Ctrl-C).
May be imported by: ``statevault.cli`` only.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import PurePath
from typing import Any

import click
from rich import filesize
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text

from statevault import shown
from statevault.errors import CorruptFileError, NotACheckpointError

EXIT_OK = 0
EXIT_FINDING = 1
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
PIPED_WIDTH = 120  # rich assumes 80 columns off a terminal, which wraps long tensor names
ERROR_CHARS = 2000  # an error line on stderr: long enough for any message of ours
NAME_CHARS = 200  # a tensor name, a state path, a file path as inspect shows it
VALUE_CHARS = 400  # a metadata or state value as inspect shows it


def exit_code_for(exc: BaseException) -> int:
    """The verdict an exception stands for: damage to a real checkpoint is a finding (1).

    Anything else (not a checkpoint, refused or unreadable input, bad usage, an existing
    destination, an internal error) means the command could not do its job (2).
    """
    if isinstance(exc, CorruptFileError) and not isinstance(exc, NotACheckpointError):
        return EXIT_FINDING
    return EXIT_ERROR


def stdout_console() -> Console:
    """A console on stdout; plain text (no colour codes) when piped."""
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=PIPED_WIDTH)
    return console


def print_report(text: str, *, headline_style: str) -> None:
    """A report's text on stdout, its first line (the verdict) in ``headline_style``.

    Reports already show names escaped and shortened; each line is escaped once more so
    that nothing from a file reaches the terminal raw.
    """
    console = stdout_console()
    headline, *rest = text.splitlines() or [""]
    console.print(f"[{headline_style}]{escape(shown(headline, limit=len(headline)))}[/]")
    for line in rest:
        console.print(escape(shown(line, limit=len(line))))


def emit_json(data: Any) -> None:
    """Machine-readable output: strict JSON (no NaN), one document on stdout.

    Full values, not shortened; ``json.dumps`` escapes control characters (``\\u001b``).
    """
    click.echo(json.dumps(data, indent=2, allow_nan=False, ensure_ascii=False))


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


class _BinarySpeedColumn(TransferSpeedColumn):
    """rich's speed column in the binary units of ``DownloadColumn(binary_units=True)``."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if speed is None:
            return Text("", style="progress.data.speed")
        unit, suffix = filesize.pick_unit_and_suffix(
            int(speed), ["B", "KiB", "MiB", "GiB", "TiB", "PiB"], 1024
        )
        return Text(f"{speed / unit:,.1f} {suffix}/s", style="progress.data.speed")


class _Bar:
    """Adapts one rich progress task to the library's ``Progress`` hook (thread-safe).

    The task stays hidden until ``start`` gives it its total, so the first frame a person
    sees already says how much work there is (never ``0/? bytes``).
    """

    def __init__(self, progress: Progress, description: str) -> None:
        self._progress = progress
        self._task = progress.add_task(description, total=None, visible=False)
        self._lock = threading.Lock()

    def start(self, total: int) -> None:
        with self._lock:
            self._progress.reset(self._task, total=total, visible=True)

    def advance(self, nbytes: int) -> None:
        with self._lock:
            self._progress.advance(self._task, nbytes)


class Bars:
    """One live display on stderr holding a bar per phase (read, then write, ...)."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress

    def bar(self, verb: str, *paths: str) -> _Bar:
        """A new, hidden bar for ``verb NAME [with NAME]``: file names (not whole paths,
        which would crowd out the bar), escaped and shortened."""
        names = [escape(shown(PurePath(path).name or path, limit=48)) for path in paths]
        return _Bar(self._progress, " ".join([verb, " with ".join(names)]))


def _columns() -> tuple[Any, ...]:
    return (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        _BinarySpeedColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )


@contextmanager
def progress_bars(*, console: Console | None = None) -> Iterator[Bars | None]:
    """Progress bars on stderr when it is a terminal; ``None`` (quiet) when piped."""
    console = console or Console(stderr=True)
    if not console.is_terminal:
        yield None
        return
    with Progress(*_columns(), console=console, transient=True) as progress:
        yield Bars(progress)


@contextmanager
def progress_bar(verb: str, *paths: str, console: Console | None = None) -> Iterator[_Bar | None]:
    """One byte-counting bar ``verb NAME`` on stderr on a terminal; ``None`` when piped."""
    with progress_bars(console=console) as bars:
        yield bars.bar(verb, *paths) if bars is not None else None
