"""A slow, obviously right reference for ``statevault.stats``: numpy in extended precision.

The finite values are taken in ``numpy.longdouble`` (80-bit on x86-64: 64-bit mantissa,
exponents to 1e±4932), so squares of 1e300 and of float64 subnormals stay exact enough to
judge the float64 streaming code against.
"""

from __future__ import annotations

import math
import sys
from fractions import Fraction
from typing import Any

import numpy as np
import torch


def values_of(tensor: torch.Tensor) -> np.ndarray:
    flat = tensor.detach().reshape(-1)
    if flat.is_complex():
        flat = torch.view_as_real(flat.to(torch.complex128)).reshape(-1)
    return flat.to(torch.float64).numpy()


def reference(tensor: torch.Tensor) -> dict[str, Any]:
    """The statistics ``stats`` promises for ``tensor``, computed the direct way."""
    every = values_of(tensor)
    finite = every[np.isfinite(every)]
    result: dict[str, Any] = {
        "values": every.size,
        "nan": int(np.isnan(every).sum()),
        "posinf": int((every == np.inf).sum()),
        "neginf": int((every == -np.inf).sum()),
        "zeros": int((every == 0).sum()),
    }
    if finite.size == 0:
        return {**result, **dict.fromkeys(("minimum", "maximum", "mean", "std", "norm"))}
    wide = finite.astype(np.longdouble)
    mean = wide.sum() / finite.size
    std = np.sqrt(((wide - mean) ** 2).sum() / finite.size)
    norm = np.sqrt((wide**2).sum())
    return {
        **result,
        "minimum": float(finite.min()),
        "maximum": float(finite.max()),
        "mean": float(mean),
        "std": float(std),
        "norm": _float64_norm(finite, float(norm)),
    }


def _float64_norm(finite: np.ndarray, extended: float) -> float:
    """The norm rounded once to float64, exactly where it lies near float64's largest value.

    Converting the 64-bit-mantissa result to float64 rounds twice; a norm between the
    largest float64 and the halfway point above it would read as inf, not as that largest
    value. Exact rational arithmetic settles which side of the halfway point it is on.
    """
    largest = Fraction(sys.float_info.max)
    if math.isfinite(extended) and extended < sys.float_info.max:
        return extended
    squares = _squares(finite)
    halfway = largest + Fraction(2) ** (sys.float_info.max_exp - sys.float_info.mant_dig) / 2
    return math.inf if squares >= halfway**2 else sys.float_info.max


def assert_matches(found: dict[str, Any], tensor: torch.Tensor) -> None:
    """Counts and extremes equal; mean, std and norm to 1e-12 of the scale of the values."""
    expected = reference(tensor)
    for key in ("values", "nan", "posinf", "neginf", "zeros", "minimum", "maximum"):
        assert found[key] == expected[key], (key, found[key], expected[key])
    if expected["mean"] is None:
        assert found["mean"] is found["std"] is found["norm"] is None
        return
    magnitude = max(abs(expected["minimum"]), abs(expected["maximum"]))
    assert math.isclose(found["mean"], expected["mean"], rel_tol=1e-12, abs_tol=1e-12 * magnitude)
    assert math.isclose(found["std"], expected["std"], rel_tol=1e-10), (found, expected)
    if math.isinf(expected["norm"]) != math.isinf(found["norm"]):
        # at float64's edge: one side says inf, the other the largest float; either is fine
        # where the exact norm is within 1e-12 of the finite answer
        finite_answer = min(found["norm"], expected["norm"])
        exact_squared = _exact_squares(tensor)
        assert abs(exact_squared - Fraction(finite_answer) ** 2) <= Fraction(2e-12) * exact_squared
    else:
        assert math.isclose(found["norm"], expected["norm"], rel_tol=1e-12), (found, expected)


def _squares(finite: np.ndarray) -> Fraction:
    return sum((Fraction(float(value)) ** 2 for value in finite), Fraction(0))


def _exact_squares(tensor: torch.Tensor) -> Fraction:
    every = values_of(tensor)
    return _squares(every[np.isfinite(every)])
