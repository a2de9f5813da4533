"""``statevault verify``: re-read a checkpoint and check every checksum and its header."""

from __future__ import annotations

import click

from statevault._verify import verify
from statevault.cli._output import EXIT_FINDING, emit_json, print_report, progress_bar


@click.command("verify")
@click.argument("path", type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document for scripts.")
@click.pass_context
def verify_command(ctx: click.Context, path: str, as_json: bool) -> None:
    """Check PATH's header and every tensor checksum; exit 0 only when all is well.

    Every damaged tensor is named (not just the first). Files without checksums get a
    structure-only check, and the output says so. Exit codes: 0 intact, 1 damaged,
    2 could not verify.
    """
    with progress_bar("verifying") as bar:
        report = verify(path, progress=bar)
    if as_json:
        emit_json(report.to_dict())
    else:
        print_report(str(report), headline_style="green" if report.ok else "bold red")
    if not report.ok:
        ctx.exit(EXIT_FINDING)
