"""``--storage-option KEY=VALUE``: the ``storage_options`` of a URL, from the command line.

Repeatable; each VALUE is JSON when it parses as JSON (``anon=true``, ``max_retries=5``)
and a string otherwise; a dotted KEY fills a nested dict
(``client_kwargs.region_name=eu-west-1``), as fsspec's own ``--storage-options`` users
expect. Values are often credentials, so no message here or later ever shows one: a bad
item is named by its key alone. May be imported by: ``statevault.cli`` only.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def parse_storage_options(items: Sequence[str]) -> dict[str, Any] | None:
    """``["key=VALUE", "a.b=1"]`` -> ``{"key": "VALUE", "a": {"b": 1}}``; None when empty."""
    if not items:
        return None
    options: dict[str, Any] = {}
    for item in items:
        key, equals, text = item.partition("=")
        key = key.strip()
        if not equals or not key or any(not part for part in key.split(".")):
            raise click.BadParameter(
                "each --storage-option is KEY=VALUE, with a KEY such as endpoint_url or "
                "client_kwargs.region_name (the item is not shown: it may hold a credential)",
                param_hint="--storage-option",
            )
        try:
            value: Any = json.loads(text)
        except ValueError:
            value = text
        *parents, leaf = key.split(".")
        place = options
        for part in parents:
            nested = place.setdefault(part, {})
            if not isinstance(nested, dict):
                raise click.BadParameter(
                    f"{key}: {part} is given both as a value and as a group of keys",
                    param_hint="--storage-option",
                )
            place = nested
        if isinstance(place.get(leaf), dict):
            raise click.BadParameter(
                f"{key}: is given both as a value and as a group of keys",
                param_hint="--storage-option",
            )
        place[leaf] = value
    return options


def _convert(ctx: click.Context, param: click.Parameter, value: Sequence[str]) -> Any:
    return parse_storage_options(value)


def storage_option(command: F) -> F:
    """Add ``--storage-option`` (repeatable) to ``command`` as its ``storage_options``."""
    return click.option(
        "--storage-option",
        "storage_options",
        multiple=True,
        metavar="KEY=VALUE",
        callback=_convert,
        help=(
            "For an s3:// (or other fsspec) URL: one of the storage_options passed to "
            "fsspec, e.g. endpoint_url=http://127.0.0.1:9000 or anon=true; repeatable; "
            "VALUE is JSON when it parses, else text; a.b=VALUE nests. Credentials are "
            "better left to the environment (AWS_* variables, ~/.aws) than the shell history."
        ),
    )(command)
