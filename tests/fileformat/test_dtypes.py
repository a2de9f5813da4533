"""Every spelling of a floating-point dtype means the same dtype; anything else is named."""

from __future__ import annotations

import pytest
import torch

from statevault import InvalidArgumentError
from statevault.fileformat.dtypes import SPECS, dtype_from_name, dtype_name, float_dtype


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
