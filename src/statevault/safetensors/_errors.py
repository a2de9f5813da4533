"""The drop-in's errors, and how errors from below are raised as safetensors raises them.

May import ``statevault.errors``; imported by the other modules of ``statevault.safetensors``.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from statevault.errors import (
    InvalidArgumentError,
    StateDictMismatchError,
    StateVaultError,
    UnsupportedObjectError,
)


def _reference_error() -> type[Exception]:
    """safetensors' own error class when that package is installed (callers catch it)."""
    try:
        module = importlib.import_module("safetensors")
    except ImportError:
        return Exception
    found = getattr(module, "SafetensorError", None)
    return found if isinstance(found, type) and issubclass(found, Exception) else Exception


if TYPE_CHECKING:
    _ReferenceError = Exception
else:
    _ReferenceError = _reference_error()


class SafetensorError(StateVaultError, _ReferenceError):
    """What safetensors raises as ``SafetensorError``: a damaged file, an unknown tensor
    name, a closed handle, a bad ``framework``/``backend``/``device``.

    Also a ``safetensors.SafetensorError`` when that package is installed.
    """


class SharedTensorsError(UnsupportedObjectError, RuntimeError):
    """``save_file`` got tensors that share memory (safetensors raises ``RuntimeError``)."""


class SliceIndexError(StateVaultError, IndexError):
    """A slice handle indexed out of range or with more indices than dimensions."""


@contextmanager
def _as_caught() -> Iterator[None]:
    """Our errors from below, made also a :class:`SafetensorError`, as safetensors raises.

    The original class stays a base too: ``except statevault.HeaderError`` still works.
    """
    try:
        yield
    except (SafetensorError, InvalidArgumentError, StateDictMismatchError):
        raise
    except StateVaultError as exc:
        both = _with_reference_error(type(exc))
        copy = both(*exc.args)  # OSError kinds keep their errno, set from the arguments
        copy.__dict__.update(exc.__dict__)
        raise copy from exc


_DUAL: dict[type[StateVaultError], type[StateVaultError]] = {}


def _with_reference_error(cls: type[StateVaultError]) -> type[StateVaultError]:
    if cls not in _DUAL:
        _DUAL[cls] = type(cls.__name__, (cls, SafetensorError), {"__module__": __name__})
    return _DUAL[cls]
