"""``statevault convert``: .pt/.pth, safetensors or a sharded directory -> a statevault file."""

from __future__ import annotations

import re

import click

from statevault.cli._output import emit_json, progress_bars
from statevault.fileformat.dtypes import FLOAT_DTYPE_NAMES
from statevault.tools.conversion import convert


def _regex(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None:
        try:
            re.compile(value)
        except re.error as exc:
            raise click.BadParameter(f"not a valid regular expression: {exc}") from None
    return value


@click.command("convert")
@click.argument("src", type=click.Path(path_type=str))
@click.argument("dst", type=click.Path(dir_okay=False, path_type=str))
@click.option(
    "--dtype",
    type=click.Choice(sorted(FLOAT_DTYPE_NAMES), case_sensitive=False),
    default=None,
    help="Cast every floating-point tensor (ints, bools, complex unchanged).",
)
@click.option(
    "--keys",
    "keys",
    default=None,
    callback=_regex,
    metavar="REGEX",
    help="Keep only tensors whose name matches (re.search); output becomes a flat dict.",
)
@click.option(
    "--strip-prefix",
    "strip_prefix",
    multiple=True,
    metavar="PREFIX",
    help="Remove PREFIX from tensor names (repeatable; first match wins).",
)
@click.option(
    "--force", is_flag=True, help="Replace DST if it exists (atomically: never half-written)."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document for scripts.")
def convert_command(
    src: str,
    dst: str,
    dtype: str | None,
    keys: str | None,
    strip_prefix: tuple[str, ...],
    force: bool,
    as_json: bool,
) -> None:
    """Convert SRC into a statevault file DST (written atomically, with checksums).

    SRC is a .pt/.pth file (zip or legacy format, read only through torch's weights-only
    loader: a file it refuses is never unpickled), a safetensors file, a shard index, or a
    folder (sharded, save_pretrained, a Trainer checkpoint-N, accelerate save_state: all of
    its state in one file). `statevault diff SRC DST` then shows they are equal.
    An existing DST is refused (exit 2) unless --force is given.
    """
    with progress_bars() as bars:
        report = convert(
            src,
            dst,
            dtype=dtype,
            keys=keys,
            strip_prefix=strip_prefix,
            overwrite=force,
            progress=bars.bar("reading", src) if bars else None,
            write_progress=bars.bar("writing", dst) if bars else None,
        )
    if as_json:
        emit_json(report.to_dict())
    else:
        click.echo(str(report))
