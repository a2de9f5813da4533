"""Every spelling of a floating-point dtype means the same dtype; anything else is named."""

from __future__ import annotations

import pytest
import torch

from statevault import InvalidArgumentError
from statevault.fileformat.dtypes import (
    SPECS,
    _optional,
    dtype_from_name,
    dtype_name,
    float_dtype,
    spec_for,
)


@pytest.mark.parametrize(
    ("spelling", "dtype"),
    [
        (torch.bfloat16, torch.bfloat16),
        ("bf16", torch.bfloat16),
        ("BF16", torch.bfloat16),
        ("torch.bfloat16", torch.bfloat16),
        ("bfloat16", torch.bfloat16),
        ("half", torch.float16),
        ("F32", torch.float32),
        ("fp64", torch.float64),
    ],
)
def test_every_spelling_gives_the_torch_dtype(spelling: object, dtype: torch.dtype) -> None:
    assert float_dtype(spelling) is dtype


@pytest.mark.parametrize("bad", ["int8", "bogus", torch.int64, 16, None])
def test_a_bad_dtype_names_the_argument_the_value_and_the_choices(bad: object) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        float_dtype(bad, argument="cast")
    message = str(caught.value)
    assert message.startswith(f"cast={bad!r} is not a floating-point dtype")
    assert "bf16" in message and "float32" in message
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, TypeError)


def test_dtype_name_drops_the_torch_prefix() -> None:
    assert dtype_name(torch.bfloat16) == "bfloat16"
    assert dtype_name(torch.float8_e4m3fn) == "float8_e4m3fn"


def test_recorded_dtype_names_are_dtype_name_and_parse_back() -> None:
    for dtype, spec in SPECS.items():
        assert spec.name == dtype_name(dtype)
        assert dtype_from_name(spec.name) is dtype


def test_a_bad_dtype_message_is_whole_and_names_dtype_by_default() -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        float_dtype("int8")
    assert str(caught.value) == (
        "dtype='int8' is not a floating-point dtype: pass a torch dtype such as torch.bfloat16 "
        "or one of bf16, bfloat16, double, f16, f32, f64, float, float16, float32, float64, "
        "fp16, fp32, fp64, half"
    )


def test_storage_codes_and_the_dtypes_that_need_our_metadata_are_pinned() -> None:
    stored = {
        dtype_name(dtype): (spec.code, spec.trailing, spec.encoded) for dtype, spec in SPECS.items()
    }
    assert stored["float32"] == ("F32", None, False)
    assert stored["bool"] == ("BOOL", None, False)
    assert stored["complex64"] == ("C64", None, False)
    assert stored["complex128"] == ("F64", 2, True)
    assert stored["complex32"] == ("F16", 2, True)
    assert stored["float8_e8m0fnu"] == ("U8", None, True)
    assert stored["float4_e2m1fn_x2"] == ("U8", None, True)
    assert spec_for(torch.float32) == SPECS[torch.float32]
    assert spec_for(torch.quint8) is None and dtype_from_name("quint8") is None


def test_optional_dtypes_are_found_by_name_or_none() -> None:
    # runs at import to build the tables; called here so its logic is tested too
    assert _optional("float32") is torch.float32
    assert _optional("float99_missing") is None
    assert _optional("nn") is None  # an attribute of torch that is not a dtype
