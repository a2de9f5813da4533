"""``statevault report``: write the HTML report of a checkpoint (and its diff with another)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import click

from statevault import html_report, shown
from statevault.cli._output import human_bytes, progress_bar, stdout_console
from statevault.cli.storage_option import storage_option


def _write(path: Path, text: str) -> None:
    """Write ``text`` beside ``path`` and rename it into place: never a half-written page."""
    folder = path.parent if str(path.parent) else Path(".")
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


@click.command("report")
@click.argument("path", type=click.Path(path_type=str))
@click.argument("other", type=click.Path(path_type=str), required=False)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    default=Path("report.html"),
    show_default=True,
    help="The HTML file to write (replaced if it exists).",
)
@storage_option
def report_command(
    path: str, other: str | None, output: Path, storage_options: dict[str, Any] | None
) -> None:
    """Write one self-contained HTML page about PATH (and its diff with OTHER).

    The page shows a treemap of sizes by module (dtype as colour), a per-tensor table
    that sorts and filters, norm and std along depth, a histogram per tensor, the flags
    of ``statevault stats``, metadata and non-tensor state; with OTHER, per-layer relative
    change along depth, tensors only in one side and shape/dtype changes. Everything is
    inlined: the page makes no network request. Exit 0 when written (even if the
    checkpoint is damaged: the page says so), 2 when it could not be made.
    """
    with progress_bar("measuring", path) as bar:
        page = html_report(path, compare_to=other, progress=bar, storage_options=storage_options)
    _write(output, page)
    stdout_console().print(
        f"wrote {shown(str(output))} ({human_bytes(len(page.encode('utf-8')))})", markup=False
    )
