"""Tie detection on save: same bytes viewed the same way, and nothing else."""

from __future__ import annotations

import torch

from statevault.engine.ties import find_ties


def test_no_shared_memory_means_no_ties() -> None:
    named = [(f"t{i}", torch.ones(3)) for i in range(5)]
    assert find_ties(named) == {}


def test_later_names_point_at_the_first_of_their_group() -> None:
    base = torch.arange(12.0).reshape(3, 4)
    other = torch.zeros(2)
    named = [("a", base), ("x", other), ("b", base), ("c", base.view(3, 4)), ("y", other)]
    assert find_ties(named) == {"b": "a", "c": "a", "y": "x"}


def test_same_address_viewed_differently_is_not_a_tie() -> None:
    base = torch.arange(12.0).reshape(3, 4)
    named = [
        ("full", base),
        ("head", base[:2]),  # same start address, other shape
        ("transposed", base.t()),  # other strides
        ("bytes", base.view(torch.int32)),  # other dtype
    ]
    assert find_ties(named) == {}


def test_empty_tensors_are_never_tied() -> None:
    empty = torch.empty(0)
    assert find_ties([("a", empty), ("b", empty), ("c", torch.empty(0))]) == {}
