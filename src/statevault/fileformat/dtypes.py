"""Mapping between torch dtypes and safetensors dtype codes.

Most torch dtypes have a safetensors code of their own. A few have none that the reference
reader can load, so they are stored under a code it *can* load and the true dtype is recorded
in our metadata (see ``DtypeSpec.trailing``):

* ``complex128`` -> ``F64`` with an extra trailing dimension of 2 (real, imaginary)
* ``complex32``  -> ``F16`` with an extra trailing dimension of 2
* ``float8_e8m0fnu`` and ``float4_e2m1fn_x2`` -> ``U8`` (their raw bytes, same shape)

Any safetensors reader therefore sees meaningful numbers or raw bytes, and statevault
restores the exact dtype bit for bit.

May import: ``statevault.errors`` (and torch). Imported by: every layer that names or parses a
dtype (``dtype_name`` and ``float_dtype`` are the one naming helper and the one parser).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from statevault.errors import InvalidArgumentError

# The order in which the reference implementation lays tensors out (descending), so that
# every tensor stays aligned to its element size and our bytes match safetensors' own.
LAYOUT_ORDER: tuple[str, ...] = (
    "U64", "I64", "F64", "C64", "F32", "U32", "I32", "BF16", "F16", "U16", "I16",
    "F8_E5M2FNUZ", "F8_E4M3FNUZ", "F8_E8M0", "F8_E4M3", "F8_E5M2", "I8", "U8", "F4", "BOOL",
)  # fmt: skip
LAYOUT_RANK: dict[str, int] = {code: rank for rank, code in enumerate(LAYOUT_ORDER)}

# Bytes per element of each code we read; F4 and F6 are sub-byte and handled as refusals.
CODE_ITEMSIZE: dict[str, int] = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E4M3FNUZ": 1,
    "F8_E5M2FNUZ": 1, "F8_E8M0": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}  # fmt: skip


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``: the name statevault shows and records."""
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class DtypeSpec:
    """How one torch dtype is written: the safetensors code and an optional trailing dim."""

    dtype: torch.dtype
    code: str
    trailing: int | None = None  # extra last dimension in the stored shape (complex pairs)

    @property
    def name(self) -> str:
        return dtype_name(self.dtype)

    @property
    def encoded(self) -> bool:
        """True when readers need our metadata to recover the dtype exactly."""
        return CODE_TO_DTYPE.get(self.code) is not self.dtype


def _optional(name: str) -> torch.dtype | None:
    value = getattr(torch, name, None)
    return value if isinstance(value, torch.dtype) else None


_NATIVE: list[tuple[str | None, str]] = [
    ("float64", "F64"), ("float32", "F32"), ("float16", "F16"), ("bfloat16", "BF16"),
    ("complex64", "C64"), ("int64", "I64"), ("int32", "I32"), ("int16", "I16"),
    ("int8", "I8"), ("uint8", "U8"), ("uint16", "U16"), ("uint32", "U32"),
    ("uint64", "U64"), ("bool", "BOOL"), ("float8_e4m3fn", "F8_E4M3"),
    ("float8_e5m2", "F8_E5M2"), ("float8_e4m3fnuz", "F8_E4M3FNUZ"),
    ("float8_e5m2fnuz", "F8_E5M2FNUZ"),
]  # fmt: skip

CODE_TO_DTYPE: dict[str, torch.dtype] = {}
SPECS: dict[torch.dtype, DtypeSpec] = {}
for _name, _code in _NATIVE:
    _dt = _optional(_name)  # type: ignore[arg-type]
    if _dt is not None:
        CODE_TO_DTYPE[_code] = _dt
        SPECS[_dt] = DtypeSpec(_dt, _code)

_e8m0 = _optional("float8_e8m0fnu")
if _e8m0 is not None:
    CODE_TO_DTYPE["F8_E8M0"] = _e8m0  # files written by safetensors itself
    SPECS[_e8m0] = DtypeSpec(_e8m0, "U8")  # the reference reader cannot load F8_E8M0
_fp4 = _optional("float4_e2m1fn_x2")
if _fp4 is not None:
    SPECS[_fp4] = DtypeSpec(_fp4, "U8")
SPECS[torch.complex128] = DtypeSpec(torch.complex128, "F64", trailing=2)
SPECS[torch.complex32] = DtypeSpec(torch.complex32, "F16", trailing=2)

NAME_TO_DTYPE: dict[str, torch.dtype] = {spec.name: dt for dt, spec in SPECS.items()}


def spec_for(dtype: torch.dtype) -> DtypeSpec | None:
    """The storage spec of ``dtype``, or None when it cannot be stored."""
    return SPECS.get(dtype)


def dtype_from_name(name: str) -> torch.dtype | None:
    """Parse a dtype name as recorded in our metadata (``"complex128"``)."""
    return NAME_TO_DTYPE.get(name)


# The spellings a ``dtype=`` argument accepts anywhere in the API (torch's own names, the short
# names people type, and safetensors codes), all lower-case.
FLOAT_DTYPE_NAMES: dict[str, torch.dtype] = {
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "f16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "fp32": torch.float32, "f32": torch.float32, "float32": torch.float32, "float": torch.float32,
    "fp64": torch.float64, "f64": torch.float64, "float64": torch.float64, "double": torch.float64,
}  # fmt: skip


# What a ``dtype=`` argument may be: a torch dtype or any spelling float_dtype accepts.
DtypeLike = torch.dtype | str


def float_dtype(value: object, *, argument: str = "dtype") -> torch.dtype:
    """A floating-point dtype from a torch dtype or any spelling in ``FLOAT_DTYPE_NAMES``.

    ``"torch.bfloat16"``, ``"BF16"`` and ``torch.bfloat16`` all mean the same; anything else
    raises :class:`InvalidArgumentError` naming ``argument``, the value and the choices.
    """
    found: torch.dtype | None = None
    if isinstance(value, torch.dtype):
        found = value if value.is_floating_point else None
    elif isinstance(value, str):
        found = FLOAT_DTYPE_NAMES.get(value.lower().removeprefix("torch."))
    if found is None:
        raise InvalidArgumentError(
            f"{argument}={value!r} is not a floating-point dtype: pass a torch dtype such as "
            f"torch.bfloat16 or one of {', '.join(sorted(FLOAT_DTYPE_NAMES))}"
        )
    return found
