"""What torch's weights-only loader may build besides tensors: numpy arrays, nothing more.

Hugging Face Trainer's ``rng_state.pth`` and accelerate's ``random_states_0.pkl`` hold numpy's
RNG state, ``('MT19937', uint32[624], int, int, float)``. Unpickling that array needs numpy's
array reconstruction: ``_reconstruct``, ``ndarray``, ``dtype`` and the dtype classes of the
numeric dtypes statevault can store. That is all we allow, and only inside
:func:`numpy_arrays_allowed` (torch's ``safe_globals`` context manager), never process-wide:
numpy scalars, object arrays and every other global stay refused. A file that needs more is
refused with :class:`WeightsOnlyRefusal`.

May be imported by the reader modules (and their tests).
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from typing import Any

import torch

from statevault.errors import UnsupportedObjectError
from statevault.fileformat.tree import NUMPY_DTYPES

# where _reconstruct lives: numpy 2 moved it, and pickles name whichever wrote them
_RECONSTRUCT_NAMES = ("numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct")


class WeightsOnlyRefusal(UnsupportedObjectError):
    """The file needs a real unpickler (more than tensors and numpy arrays) to be read.

    ``reason`` is the short form a folder listing shows.
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def numpy_array_globals() -> list[Any]:
    """The allowlist entries (``(object, qualified name)`` pairs), or [] without numpy."""
    try:
        numpy = importlib.import_module("numpy")
        multiarray = importlib.import_module(
            "numpy._core.multiarray" if hasattr(numpy, "_core") else "numpy.core.multiarray"
        )
    except ImportError:
        return []
    reconstruct = multiarray._reconstruct
    entries: list[Any] = [(reconstruct, name) for name in _RECONSTRUCT_NAMES]
    entries += [numpy.ndarray, numpy.dtype]
    # numpy >= 1.25 pickles a dtype with its class (numpy.dtypes.UInt32DType, ...)
    entries += sorted(
        {type(numpy.dtype(name)) for name in NUMPY_DTYPES} - {numpy.dtype},
        key=lambda cls: cls.__name__,
    )
    return entries


@contextlib.contextmanager
def numpy_arrays_allowed() -> Iterator[None]:
    """Let ``torch.load(weights_only=True)`` rebuild numpy arrays inside this block only."""
    scoped = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    entries = numpy_array_globals()
    if scoped is None or not entries:
        yield
        return
    with scoped(entries):
        yield
