"""The tools' argument checks: a bad argument is an InvalidArgumentError naming it and the fix.

Checked before any file is opened, so a wrong call fails fast and the same way from every
tool. May be imported by: ``statevault.tools`` only.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

from statevault.engine.fsspec_storage import is_url
from statevault.errors import InvalidArgumentError


def checkpoint_path(value: object, *, argument: str = "source") -> Path:
    """``value`` as a path, or an error naming ``argument`` (the tools read files by path)."""
    if isinstance(value, (str, os.PathLike)):
        path = os.fspath(value)
        if isinstance(path, str):
            return Path(path)
    raise InvalidArgumentError(
        f"{argument} must be a path (str or os.PathLike) to a checkpoint file or directory, "
        f"got {type(value).__name__}: {value!r:.80}"
    )


def checkpoint_source(value: object, *, argument: str = "source") -> Path | str:
    """A URL (``s3://...``) as the string it is (``Path`` would fold its ``//``), else
    :func:`checkpoint_path`."""
    if is_url(value):
        assert isinstance(value, str)  # is_url says so
        return value
    return checkpoint_path(value, argument=argument)


def tolerance(value: object, *, argument: str) -> float:
    """A finite number >= 0 (``atol``, ``rtol``)."""
    valid = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not valid or not math.isfinite(float(value)) or float(value) < 0:  # type: ignore[arg-type]
        raise InvalidArgumentError(f"{argument} must be a finite number >= 0, got {value!r:.80}")
    return float(value)  # type: ignore[arg-type]


def thread_count(value: object) -> int | None:
    """``None`` (the default count) or a whole number of threads >= 1."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise InvalidArgumentError(f"threads must be None or an int >= 1, got {value!r:.80}")


def prefixes(value: object, *, argument: str = "strip_prefix") -> tuple[str, ...]:
    """One prefix or a sequence of them, as a tuple (a str is one prefix, not its characters)."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Sequence) and all(isinstance(item, str) for item in value):
        return tuple(value)
    raise InvalidArgumentError(
        f"{argument} must be a str or a sequence of str, got {type(value).__name__}: {value!r:.80}"
    )


def key_pattern(value: object) -> re.Pattern[str] | None:
    """``keys``, a regular expression searched in each tensor name, compiled."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidArgumentError(
            f"keys must be a regular expression (str), got {type(value).__name__}: {value!r:.80}"
        )
    try:
        return re.compile(value)
    except re.error as exc:
        raise InvalidArgumentError(
            f"keys={value!r} is not a valid regular expression: {exc}"
        ) from exc
