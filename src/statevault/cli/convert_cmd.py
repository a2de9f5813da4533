"""``statevault convert``: any checkpoint -> a statevault file or Hugging Face shards.

Calls the public function of the same name. May be imported by: ``statevault.cli`` only.
"""

from __future__ import annotations

import re
from typing import Any

import click

import statevault
from statevault.cli._output import emit_json, progress_bars
from statevault.cli.storage_option import storage_option


def _regex(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None:
        try:
            re.compile(value)
        except re.error as exc:
            raise click.BadParameter(f"not a valid regular expression: {exc}") from None
    return value


def _size(value: str | None) -> int | str | None:
    """A plain number is bytes; anything else goes to the library, which names the units."""
    return int(value) if value is not None and value.strip().isdigit() else value


@click.command("convert")
@click.argument("src", type=click.Path(path_type=str))
@click.argument("dst", type=click.Path(path_type=str))
@click.option(
    "--dtype",
    default=None,
    metavar="DTYPE",
    # the library checks the spelling (one parser for every dtype= in the API) and its
    # error lists every accepted name
    help="Cast every floating-point tensor (ints, bools, complex unchanged): bf16, fp16, "
    "fp32, fp64 or a torch name (bfloat16, float16, float32, float64).",
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
    "--max-shard-size",
    "max_shard_size",
    default=None,
    metavar="SIZE",
    help="Write Hugging Face shards of at most SIZE (bytes, or 500MB, 5GB: decimal units) and "
    "their index instead of one file; DST may then be a directory (model-0000N-of-0000M."
    "safetensors + model.safetensors.index.json there, as from_pretrained reads them).",
)
@click.option(
    "--force", is_flag=True, help="Replace DST if it exists (atomically: never half-written)."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document for scripts.")
@storage_option
def convert_command(
    src: str,
    dst: str,
    dtype: str | None,
    keys: str | None,
    strip_prefix: tuple[str, ...],
    max_shard_size: str | None,
    force: bool,
    as_json: bool,
    storage_options: dict[str, Any] | None,
) -> None:
    """Convert SRC into a statevault file DST (written atomically, with checksums).

    SRC is a .pt/.pth file (zip or legacy format, read only through torch's weights-only
    loader: a file it refuses is never unpickled), a safetensors file, a shard index, a
    folder (sharded, save_pretrained, a Trainer checkpoint-N, accelerate save_state: all of
    its state in one file) or a distributed checkpoint directory (statevault.dcp's, or DCP's
    own .metadata + .distcp: full tensors reassembled from their chunks). With
    --max-shard-size, DST becomes Hugging Face shards and their index. `statevault diff SRC DST` then shows they are equal.
    An existing DST is refused (exit 2) unless --force is given. Either may be an s3://
    (fsspec) URL; --storage-option serves both.
    """
    with progress_bars() as bars:
        report = statevault.convert(
            src,
            dst,
            dtype=dtype,
            keys=keys,
            strip_prefix=strip_prefix,
            overwrite=force,
            max_shard_size=_size(max_shard_size),
            progress=bars.bar("reading", src) if bars else None,
            write_progress=bars.bar("writing", dst) if bars else None,
            storage_options=storage_options,
        )
    if as_json:
        emit_json(report.to_dict())
    else:
        click.echo(str(report))
