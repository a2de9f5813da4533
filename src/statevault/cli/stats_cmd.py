"""``statevault stats``: a table of every tensor's numbers and flags; exit 1 on damage."""

from __future__ import annotations

from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from statevault import StatsReport, TensorStats, shown, stats
from statevault.cli._output import (
    EXIT_FINDING,
    NAME_CHARS,
    VALUE_CHARS,
    emit_json,
    human_bytes,
    progress_bar,
    stdout_console,
)
from statevault.cli.storage_option import storage_option


def _row(t: TensorStats) -> list[str]:
    shape = "[" + ", ".join(str(d) for d in t.shape) + "]"
    nonfinite = f"{t.nan:,} / {t.posinf + t.neginf:,}" if t.nonfinite else ""
    zeros = f"{t.zero_fraction:.1%}" if t.zero_fraction is not None else ""
    style = "bold red" if t.damaged else "yellow" if t.flags else ""
    flags = ", ".join(flag.kind for flag in t.flags)
    cells = [
        escape(shown(t.name, limit=NAME_CHARS)),
        t.dtype,
        shape,
        *t.formatted().values(),
        zeros,
        nonfinite,
        flags,
    ]
    return [f"[{style}]{cell}[/]" if style and cell else cell for cell in cells]


def render(report: StatsReport, *, only_flagged: bool) -> None:
    console = stdout_console()
    table = Table(show_lines=False, header_style="bold")
    table.add_column("tensor", overflow="fold", min_width=16)
    table.add_column("dtype", no_wrap=True)
    for column in ("shape", "min", "max", "mean", "std", "L2 norm", "zeros", "NaN/Inf"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("flags", overflow="fold")
    rows = report.flagged if only_flagged else report.tensors
    for t in rows:
        table.add_row(*_row(t))
    if rows:
        console.print(table)
    headline, *lines = str(report).splitlines()
    style = "bold red" if report.damaged else "yellow" if report.flagged else "green"
    console.print(
        f"[{style}]{escape(shown(headline, limit=len(headline)))}[/]  "
        f"({human_bytes(report.nbytes)} of tensor data"
        f"{', checksums verified' if report.checksummed else ''})"
    )
    for line in lines:
        console.print(escape(shown(line, limit=VALUE_CHARS)))


@click.command("stats")
@click.argument("path", type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document for scripts.")
@click.option("--flagged", "only_flagged", is_flag=True, help="List only flagged tensors.")
@storage_option
@click.pass_context
def stats_command(
    ctx: click.Context,
    path: str,
    as_json: bool,
    only_flagged: bool,
    storage_options: dict[str, Any] | None,
) -> None:
    """Health numbers of every tensor in PATH: NaN/Inf, min, max, mean, std, norm, zeros.

    Flags name what looks wrong and why: NaN or Inf (damaged training state), an optimizer
    second moment with NaN, half-precision overflow, all zeros, constant values, a norm far
    from the same layer's in the other blocks. PATH is anything inspect reads. Tensors are
    streamed in small chunks with their checksums verified. Exit codes: 0 healthy (warnings
    allowed), 1 damaged (NaN/Inf in weights or optimizer state, bad checksums), 2 not a
    checkpoint or could not read it, 130 interrupted.
    """
    with progress_bar("measuring", path) as bar:
        report = stats(path, progress=bar, storage_options=storage_options)
    if as_json:
        emit_json(report.to_dict())
    else:
        render(report, only_flagged=only_flagged)
    if report.damaged:
        ctx.exit(EXIT_FINDING)
