"""The true dtype of each tensor a safetensors file stores, refusing codes torch lacks.

statevault stores dtypes safetensors has no code for (e.g. ``complex32``) under another
code and records the real one in its metadata; this works out the (shape, dtype) such a
tensor really has, once per file. May be imported by ``readers.safetensors_file``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from statevault.errors import HeaderError, StateVaultError
from statevault.fileformat.dtypes import CODE_TO_DTYPE, dtype_from_name, spec_for
from statevault.fileformat.table import TensorTable

Signature = tuple[tuple[int, ...], torch.dtype]


def encoded_signatures(
    table: TensorTable, recorded: Mapping[str, str], *, source: str
) -> dict[str, Signature]:
    """True (shape, dtype) of the few tensors stored under another dtype code."""
    signatures = {}
    for name, dtype_name in recorded.items():
        _, code, shape, _, _ = table[name]
        dtype = dtype_from_name(dtype_name)
        spec = spec_for(dtype) if dtype is not None else None
        if dtype is None or spec is None:  # already rejected by decode(); keeps mypy honest
            raise HeaderError(f"{source}: tensor {name!r} has unknown dtype {dtype_name!r}")
        if spec.trailing is not None:
            if not shape or shape[-1] != spec.trailing:
                raise HeaderError(
                    f"{source}: tensor {name!r} stored as {code}{list(shape)} "
                    f"cannot hold {dtype_name}; header damaged"
                )
            shape = shape[:-1]
        signatures[name] = (shape, dtype)
    return signatures


def check_codes(table: TensorTable, encoded: Mapping[str, Signature], *, source: str) -> None:
    """Every plain-stored code must be a dtype this torch has (checked once, not per read)."""
    unknown = set(table.codes) - CODE_TO_DTYPE.keys()
    if not unknown:
        return
    for name, code in zip(table.names, table.codes, strict=True):
        if code in unknown and name not in encoded:
            raise StateVaultError(
                f"{source}: tensor {name!r} has dtype {code}, which this "
                f"torch {torch.__version__} has no dtype for; upgrade torch to read it"
            )
