"""``statevault ls``: the steps of a CheckpointManager directory; ``--step`` for the file tools.

Also resolves ``DIR`` / ``DIR --step N`` to a step's state file for ``verify``, ``inspect``
and ``diff`` (:func:`step_file`). Reads through ``statevault.CheckpointManager`` opened
read-only, so it works while a training run holds the directory.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

import click
from rich.markup import escape
from rich.table import Table

from statevault import CheckpointManager, StepInfo
from statevault.cli._output import EXIT_FINDING, emit_json, human_bytes, stdout_console
from statevault.cli.storage_option import storage_option
from statevault.errors import CheckpointNotFoundError

F = TypeVar("F", bound=Callable[..., Any])


def step_option(name: str = "--step", help_text: str | None = None) -> Callable[[F], F]:
    """The ``--step N`` option of a command that reads one checkpoint."""
    return click.option(
        name,
        type=click.IntRange(min=0),
        default=None,
        help=help_text
        or "When the path is a CheckpointManager directory: read step N (default: the newest "
        "valid step).",
    )


def step_file(path: str, step: int | None, storage_options: dict[str, Any] | None = None) -> str:
    """The state file of step ``step`` (or the newest valid one) when ``path`` is a managed
    directory or run URL; ``path`` itself otherwise (a file, or a folder of another kind)."""
    if step is None and "://" not in path and not os.path.isdir(path):
        return path
    try:
        with CheckpointManager(path, read_only=True, storage_options=storage_options) as manager:
            if step is None and not manager.steps():
                return path  # not managed by a CheckpointManager: e.g. a sharded folder
            return str(manager.step_path(step))
    except CheckpointNotFoundError:
        if step is None:
            return path  # a URL of an object, not of a run: the tools open it themselves
        raise


def _metrics_text(info: StepInfo) -> str:
    return ", ".join(
        f"{name}={'nan' if value is None else f'{value:.6g}'}"
        for name, value in info.metrics.items()
    )


def _render(directory: str, infos: list[StepInfo]) -> None:
    console = stdout_console()
    valid = [info.step for info in infos if info.status == "valid"]
    newest = f", newest valid: step {valid[-1]}" if valid else ""
    console.print(f"[bold]{escape(directory)}[/]: {len(infos)} step(s){newest}")
    if not infos:
        return
    table = Table(box=None, pad_edge=False)
    for column in ("step", "status", "size", "saved", "metrics", "kept because"):
        table.add_column(column, justify="right" if column in ("step", "size") else "left")
    styles = {"valid": "green", "damaged": "bold red", "unverified": "yellow"}
    for info in infos:
        saved = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.time)) if info.time else ""
        status = f"[{styles[info.status]}]{info.status}[/]"
        if info.preempted:
            status += " (preempted)"
        kept = "; ".join(info.kept) if info.kept else "-"
        if info.problem:
            kept = f"damaged: {info.problem}"
        table.add_row(
            str(info.step),
            status,
            human_bytes(info.nbytes),
            saved,
            escape(_metrics_text(info)),
            escape(kept),
        )
    console.print(table)


@click.command("ls")
@click.argument("directory", type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document for scripts.")
@click.option(
    "--no-verify",
    is_flag=True,
    help="Do not read the checksums (steps show as 'unverified' instead of valid/damaged).",
)
@storage_option
@click.pass_context
def ls_command(
    ctx: click.Context,
    directory: str,
    as_json: bool,
    no_verify: bool,
    storage_options: dict[str, Any] | None,
) -> None:
    """List the steps in DIRECTORY, a CheckpointManager directory or run URL (s3://bucket/run):
    status, size, metrics, and why retention keeps each. Exit 0 when no step is damaged, 1
    when one is."""
    with CheckpointManager(directory, read_only=True, storage_options=storage_options) as manager:
        infos = manager.steps(verify=not no_verify)
    if as_json:
        emit_json({"directory": directory, "steps": [info.to_dict() for info in infos]})
    else:
        _render(directory, infos)
    if any(info.status == "damaged" for info in infos):
        ctx.exit(EXIT_FINDING)
