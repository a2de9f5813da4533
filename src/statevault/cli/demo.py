"""``statevault demo``: the PyTorch tutorial flow, for real, with statevault."""

from __future__ import annotations

import click


@click.command()
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False),
    default=None,
    help="Where to write the demo files (default: a new temporary directory).",
)
def demo(directory: str | None) -> None:
    """Train, save, load into a fresh model, resume training: show it all matches."""
    raise click.ClickException("demo not written yet")
