"""The ``statevault`` command line: a thin layer over the public Python API.

May import: ``statevault`` (the public package) and ``statevault.errors``, nothing below them
(tests/test_layers.py checks it). May be imported by: ``statevault.__main__`` only.

Each command lives in its own module and calls one library function (``inspect``,
``verify``, ``diff``, ``convert``, ``stats``; ``report`` renders stats as a web page); this module only wires them together and turns
exceptions into one clear line on stderr and the exit code of their verdict (``--debug``
shows the traceback).
"""

from __future__ import annotations

from typing import Any

import click

from statevault import shown
from statevault.cli._output import (
    ERROR_CHARS,
    EXIT_INTERRUPTED,
    exit_code_for,
)
from statevault.cli.convert_cmd import convert_command
from statevault.cli.demo import demo
from statevault.cli.diff_cmd import diff_command
from statevault.cli.inspect_cmd import inspect_command
from statevault.cli.ls_cmd import ls_command
from statevault.cli.report_cmd import report_command
from statevault.cli.stats_cmd import stats_command
from statevault.cli.verify_cmd import verify_command
from statevault.errors import DestinationExistsError, StateVaultError

_DEBUG = "statevault.debug"


def _message(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, DestinationExistsError):
        return f"{exc.path}: already exists; pass --force to replace it (atomically)"
    if isinstance(exc, (StateVaultError, OSError, ValueError)):
        return text  # ours, the OS's and bad-argument errors say what to fix in their own words
    return f"internal error ({type(exc).__name__}: {text}); rerun with --debug for the traceback"


class _Group(click.Group):
    """Runs subcommands so that failures end in one line and their exit code, no traceback.

    The exit code is the verdict on the input (see ``exit_code_for``); Ctrl-C is 130, as
    shells report it, so scripts never read an interrupted check as "damaged".
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except Exception as exc:
            if ctx.meta.get(_DEBUG):
                raise
            click.echo(f"error: {shown(_message(exc), limit=ERROR_CHARS)}", err=True)
            ctx.exit(exit_code_for(exc))


def _set_debug(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        ctx.meta[_DEBUG] = True


def _debug_option(command: click.Command) -> click.Command:
    """Accept ``--debug`` after the subcommand too (``statevault verify x --debug``)."""
    command.params.append(
        click.Option(
            ["--debug"],
            is_flag=True,
            expose_value=False,
            is_eager=True,
            callback=_set_debug,
            help="Show the full traceback on errors.",
        )
    )
    return command


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="statevault")
@click.option(
    "--debug",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_set_debug,
    help="Show the full traceback on errors.",
)
def main() -> None:
    """Inspect, verify, diff, convert and measure PyTorch checkpoints; list a run's steps; run the demo.

    Exit codes: 0 success (intact / equal), 1 a finding about a real checkpoint (damaged /
    different), 2 could not do the job (not a checkpoint, bad usage, refused input,
    destination exists), 130 interrupted (Ctrl-C).
    """


main.add_command(demo)
for _command in (
    inspect_command,
    verify_command,
    diff_command,
    convert_command,
    stats_command,
    report_command,
    ls_command,
):
    main.add_command(_debug_option(_command))
