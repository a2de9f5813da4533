"""The tree codec alone (no disk): nested state <-> JSON skeleton + flat tensor table."""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from statevault.errors import HeaderError
from statevault.fileformat.tree import flatten, unflatten


def through_json(obj: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    skeleton, tensors = flatten(obj)
    text = json.dumps(skeleton, allow_nan=False)  # the skeleton must be strict JSON
    return unflatten(json.loads(text), tensors.__getitem__), tensors


def test_skeleton_shape_is_documented_form() -> None:
    t = torch.zeros(1)
    skeleton, tensors = flatten({"a": [t, (1, None)], 3: float("inf")})
    assert skeleton == {
        "dict": [
            ["a", {"list": [{"tensor": "a.0"}, {"tuple": [1, None]}]}],
            [3, {"float": "inf"}],
        ]
    }
    assert list(tensors) == ["a.0"]
    assert tensors["a.0"] is t  # no copy


def test_root_tensor_has_a_name() -> None:
    t = torch.ones(2)
    skeleton, tensors = flatten(t)
    assert skeleton == {"tensor": "tensor"} and tensors["tensor"] is t


def test_colliding_flat_names_get_suffixes() -> None:
    x, y, z = torch.zeros(1), torch.ones(1), torch.full((1,), 2.0)
    state = {"a.b": x, "a": {"b": y}, "a.b#2": z}
    back, tensors = through_json(state)
    assert len(tensors) == 3
    assert back["a.b"] is x and back["a"]["b"] is y and back["a.b#2"] is z


def test_torch_version_table_is_kept_at_every_level() -> None:
    sd = torch.nn.BatchNorm1d(2).state_dict()
    back, _ = through_json({"inner": sd, "plain": {"a": 1}})
    assert isinstance(back["inner"], OrderedDict)
    assert back["inner"]._metadata == sd._metadata  # type: ignore[attr-defined]
    assert not hasattr(back["plain"], "_metadata") and type(back["plain"]) is dict
    back_root, _ = through_json(sd)
    assert isinstance(back_root, OrderedDict)
    assert back_root._metadata == sd._metadata  # type: ignore[attr-defined]


def test_torch_size_becomes_tuple() -> None:
    back, _ = through_json({"shape": torch.Size([2, 3])})
    assert back["shape"] == (2, 3) and type(back["shape"]) is tuple


@pytest.mark.parametrize(
    "skeleton",
    [
        [1, 2],
        {},
        {"tensor": 5},
        {"float": "NaN"},
        {"list": "abc"},
        {"dict": [[1.5, 2]]},
        {"dict": [["a"]]},
        {"dict": {"a": 1}},
        {"set": []},
        {"tuple": [{"mystery": 1}]},
    ],
    ids=repr,
)
def test_damaged_skeletons_raise_header_error(skeleton: Any) -> None:
    with pytest.raises(HeaderError, match="damaged"):
        unflatten(skeleton, lambda name: torch.zeros(1))


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
keys = st.one_of(st.text(max_size=6), st.integers(min_value=-5, max_value=50))
trees = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=4).map(tuple),
        st.dictionaries(keys, children, max_size=4),
    ),
    max_leaves=20,
)


def same(found: Any, expected: Any) -> bool:
    if type(found) is not type(expected):
        return False
    if isinstance(expected, float):
        return (math.isnan(found) and math.isnan(expected)) or (
            found == expected and math.copysign(1, found) == math.copysign(1, expected)
        )
    if isinstance(expected, dict):
        return list(found) == list(expected) and all(
            type(a) is type(b) and same(found[a], expected[b])
            for a, b in zip(found, expected, strict=True)
        )
    if isinstance(expected, (list, tuple)):
        return len(found) == len(expected) and all(
            same(a, b) for a, b in zip(found, expected, strict=True)
        )
    return bool(found == expected)


@settings(max_examples=150, deadline=None, database=None)
@given(trees)
def test_any_plain_tree_roundtrips_through_json(tree: Any) -> None:
    back, tensors = through_json(tree)
    assert tensors == {}
    assert same(back, tree)
