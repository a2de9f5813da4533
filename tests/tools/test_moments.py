"""The streaming moments against an extended-precision reference, however they are chunked."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers.stats_reference import assert_matches, reference
from statevault.tools.moments import RunningHistogram, RunningMoments

NAN, INF = math.nan, math.inf


def streamed(tensor: torch.Tensor, sizes: list[int]) -> dict[str, object]:
    """The moments of ``tensor`` fed in pieces of the given sizes (the rest in one piece)."""
    moments = RunningMoments()
    flat = tensor.reshape(-1)
    start = 0
    for size in sizes:
        moments.add(flat[start : start + size])
        start += size
    moments.add(flat[start:])
    return {
        "values": moments.values,
        "nan": moments.nan,
        "posinf": moments.posinf,
        "neginf": moments.neginf,
        "zeros": moments.zeros,
        **moments.result()._asdict(),
    }


ADVERSARIAL = {
    "empty": torch.empty(0),
    "one": torch.tensor([3.5]),
    "nan only": torch.tensor([NAN, NAN]),
    "nan and inf": torch.tensor([1.0, NAN, INF, -INF, 2.0, 0.0]),
    "float32 subnormals": torch.tensor([1e-45, 3e-45, -1e-44, 0.0], dtype=torch.float32),
    "float64 subnormals": torch.tensor([5e-324, 1e-322, -2e-323, 1e-310], dtype=torch.float64),
    "float32 max": torch.tensor([3.4e38, 3.4e38, -3.4e38, 1.0], dtype=torch.float32),
    "float64 huge": torch.tensor([1e300, -1e300, 1e308, 1.0], dtype=torch.float64),
    "float64 1e300 and 1e-300": torch.tensor([1e300, 1e-300, 2e300], dtype=torch.float64),
    # mean 1e12, spread 1: the sum-of-squares formula loses every digit here
    "large offset": 1e12 + torch.randn(10_000, generator=torch.Generator().manual_seed(1)).double(),
    "float16 extremes": torch.tensor([65504.0, -65504.0, 6e-8, INF], dtype=torch.float16),
    "bfloat16": torch.randn(1000, generator=torch.Generator().manual_seed(2)).bfloat16(),
    "int64 big": torch.tensor([2**62, -(2**62), 7], dtype=torch.int64),
    "uint8": torch.arange(256, dtype=torch.uint8),
    "bool": torch.tensor([True, False, True]),
    "complex": torch.tensor([1 + 2j, -3j, NAN + 0j], dtype=torch.complex64),
    "float8": torch.tensor([448.0, -2.0, 0.0], dtype=torch.float8_e4m3fn),
}


@pytest.mark.parametrize("name", list(ADVERSARIAL))
@pytest.mark.parametrize("sizes", [[], [1], [2, 1], [1, 1, 1, 1, 1]])
def test_adversarial_tensors_match_the_reference(name: str, sizes: list[int]) -> None:
    tensor = ADVERSARIAL[name]
    assert_matches(streamed(tensor, sizes), tensor)


def test_huge_float64_whose_norm_overflows_reports_inf() -> None:
    tensor = torch.full((4,), 1.5e308, dtype=torch.float64)
    found = streamed(tensor, [1, 1])
    assert found["norm"] == INF  # 3e308 is beyond float64: the honest answer
    assert found["mean"] == 1.5e308 and found["std"] == 0.0


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(
        st.floats(allow_nan=True, allow_infinity=True, width=64, allow_subnormal=True),
        max_size=60,
    ),
    cuts=st.lists(st.integers(0, 20), max_size=6),
)
def test_any_values_any_chunking_match_the_reference(values: list[float], cuts: list[int]) -> None:
    tensor = torch.tensor(values, dtype=torch.float64)
    assert_matches(streamed(tensor, cuts), tensor)


def test_random_float32_in_many_chunks_matches_the_reference() -> None:
    tensor = torch.randn(300_001, generator=torch.Generator().manual_seed(0)) * 3 + 0.25
    assert_matches(streamed(tensor, [1 << 17] * 2), tensor)
    assert reference(tensor)["values"] == 300_001


def test_histogram_counts_match_numpy() -> None:
    np = pytest.importorskip("numpy")
    tensor = torch.randn(10_000, generator=torch.Generator().manual_seed(3)).double()
    tensor[::97] = NAN
    finite = tensor[torch.isfinite(tensor)].numpy()
    low, high = float(finite.min()), float(finite.max())
    histogram = RunningHistogram(low, high, 16)
    for piece in tensor.split(3000):
        histogram.add(piece)
    expected, _ = np.histogram(finite, bins=16, range=(low, high))
    assert list(histogram.result().counts) == expected.tolist()


def test_histogram_of_a_constant_puts_everything_in_one_bin() -> None:
    histogram = RunningHistogram(2.0, 2.0, 5)
    histogram.add(torch.full((7,), 2.0))
    assert histogram.result().counts == (0, 0, 7, 0, 0)


@pytest.mark.parametrize("sizes", [[], [1], [5]])
def test_the_largest_float_among_zeros_has_itself_as_norm(sizes: list[int]) -> None:
    """Found by hypothesis: rounding in the scaled moments pushed this norm to inf."""
    tensor = torch.tensor([0.0] * 5 + [1.7976931348623157e308], dtype=torch.float64)
    found = streamed(tensor, sizes)
    assert found["norm"] == 1.7976931348623157e308
    assert_matches(found, tensor)


def test_norm_just_above_the_largest_float64_rounds_to_it_not_to_inf() -> None:
    # the exact norm lies between float64's largest value and the halfway point above it
    tensor = torch.tensor([6.28e300, 1.7976931348623147e308], dtype=torch.float64)
    assert reference(tensor)["norm"] == 1.7976931348623157e308
    assert_matches(streamed(tensor, []), tensor)


def test_norm_a_hair_past_float64_may_read_as_its_largest_value() -> None:
    # exactly, this norm rounds to inf, but it is within 1e-15 of float64's largest value
    tensor = torch.tensor([6.28227607241615e300, 1.7976931348623147e308], dtype=torch.float64)
    assert reference(tensor)["norm"] == INF
    assert streamed(tensor, [])["norm"] == 1.7976931348623157e308
    assert_matches(streamed(tensor, []), tensor)
