"""The ``statevault`` command line: a thin layer over the public Python API."""

from __future__ import annotations

import click

from statevault.cli.demo import demo


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="statevault")
def main() -> None:
    """Inspect, verify, diff and convert PyTorch checkpoints; run the demo."""


main.add_command(demo)
