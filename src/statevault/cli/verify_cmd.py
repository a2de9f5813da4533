"""``statevault verify``: re-read a checkpoint and check every checksum and its header.

Calls the public function of the same name. May be imported by: ``statevault.cli`` only.
"""

from __future__ import annotations

from typing import Any

import click

import statevault
from statevault.cli._output import EXIT_FINDING, emit_json, print_report, progress_bar
from statevault.cli.ls_cmd import step_file, step_option
from statevault.cli.storage_option import storage_option


@click.command("verify")
@click.argument("path", type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document for scripts.")
@step_option()
@storage_option
@click.pass_context
def verify_command(
    ctx: click.Context,
    path: str,
    as_json: bool,
    step: int | None,
    storage_options: dict[str, Any] | None,
) -> None:
    """Check every byte of PATH that records a checksum; exit 0 only when all is well.

    statevault files: the header digest and every tensor's xxh3-64 checksum; torch .pt zip
    files: the CRC-32 of every zip entry; plain safetensors: the structure; legacy .pt
    files: nothing to check (said so, exit 0). Every damaged tensor is named (not just the
    first). Exit codes: 0 intact, 1 damaged, 2 not a checkpoint or could not verify,
    130 interrupted.
    """
    path = step_file(path, step, storage_options)
    with progress_bar("verifying", path) as bar:
        report = statevault.verify(path, progress=bar, storage_options=storage_options)
    if as_json:
        emit_json(report.to_dict())
    else:
        print_report(str(report), headline_style="green" if report.ok else "bold red")
    if not report.ok:
        ctx.exit(EXIT_FINDING)
