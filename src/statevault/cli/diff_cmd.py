"""``statevault diff``: keys, shapes, dtypes and values of two checkpoints, like ``diff``.

Calls the public function of the same name. May be imported by: ``statevault.cli`` only.
"""

from __future__ import annotations

from typing import Any

import click

import statevault
from statevault.cli._output import EXIT_FINDING, emit_json, print_report, progress_bar
from statevault.cli.ls_cmd import step_file, step_option
from statevault.cli.storage_option import storage_option


@click.command("diff")
@click.argument("a", type=click.Path(path_type=str))
@click.argument("b", type=click.Path(path_type=str))
@click.option(
    "--atol",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Absolute tolerance.",
)
@click.option(
    "--rtol",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Relative tolerance (times |B|).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document for scripts.")
@step_option(
    "--step-a", "When A is a CheckpointManager directory: its step (default: newest valid)."
)
@step_option(
    "--step-b", "When B is a CheckpointManager directory: its step (default: newest valid)."
)
@storage_option
@click.pass_context
def diff_command(
    ctx: click.Context,
    a: str,
    b: str,
    atol: float,
    rtol: float,
    as_json: bool,
    step_a: int | None,
    step_b: int | None,
    storage_options: dict[str, Any] | None,
) -> None:
    """Compare checkpoints A and B: exit 0 if equal, 1 if different (or damaged), 2 on error.

    Reports keys only in A or B, shape and dtype changes, per-tensor max abs and relative
    L2 differences, and changed non-tensor state. Values are equal when
    |a - b| <= atol + rtol * |b| (NaNs in the same place are equal). Either side may be any
    kind inspect accepts, e.g. a .pt and its converted file. Both files are streamed in
    parallel in small chunks with their checksums verified; memory stays at a few MB.
    """
    a, b = step_file(a, step_a, storage_options), step_file(b, step_b, storage_options)
    with progress_bar("comparing", a, b) as bar:
        report = statevault.diff(
            a, b, atol=atol, rtol=rtol, progress=bar, storage_options=storage_options
        )
    if as_json:
        emit_json(report.to_dict())
    else:
        print_report(str(report), headline_style="green" if report.ok else "yellow")
    if not report.ok:
        ctx.exit(EXIT_FINDING)
