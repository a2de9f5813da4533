"""The skeleton's one node decoder and one walk (no disk, no torch tensors)."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest

from statevault.fileformat.skeleton import (
    DICT,
    FLOAT,
    LIST,
    MAX_DEPTH,
    TENSOR,
    TUPLE,
    VALUE,
    BadNode,
    children,
    read_node,
    walk,
    with_tensor_prefix,
)

TREE = {
    "dict": [
        ["model", {"dict": [["w", {"tensor": "model.w"}]], "torch_metadata": {"": {"version": 1}}}],
        [0, {"list": [1.5, {"float": "-inf"}, {"tuple": [None, {"tensor": "0.1.1"}]}]}],
        ["rng", {"tensor": "rng", "type": "numpy.ndarray:uint32"}],
    ]
}


def test_read_node_decodes_every_kind() -> None:
    assert read_node("text") == (VALUE, "text", None, None, None)
    assert read_node(None) == (VALUE, None, None, None, None)
    assert read_node({"tensor": "a"}) == (TENSOR, "a", None, None, None)
    assert read_node({"tensor": "a", "type": "numpy.scalar:float64"}) == (
        TENSOR, "a", None, "numpy.scalar:float64", None,
    )  # fmt: skip
    kind, value, *_ = read_node({"float": "nan"})
    assert kind == FLOAT and math.isnan(value)
    assert read_node({"tuple": [1]}) == (TUPLE, None, [1], None, None)
    model = read_node(TREE["dict"][0][1])
    assert model[0] == DICT and model[4] == {"": {"version": 1}}
    assert list(children(model)) == [("w", {"tensor": "model.w"})]
    assert list(children(read_node({"list": ["a", "b"]}))) == [(0, "a"), (1, "b")]
    assert list(children(read_node(3))) == []


@pytest.mark.parametrize(
    ("node", "problem"),
    [
        ([1], "unexpected node [1]"),
        ({"tensor": "a", "extra": 1}, "unexpected node {'tensor': 'a', 'extra': 1}"),
        ({"tensor": "a", "type": 3}, "unexpected node {'tensor': 'a', 'type': 3}"),
        ({"float": "NaN"}, "unknown node kind 'float' or malformed body 'NaN'"),
        ({"set": []}, "unknown node kind 'set' or malformed body []"),
        ({"list": "ab"}, "unknown node kind 'list' or malformed body 'ab'"),
        ({"dict": [["a", 1], ["a", 2]]}, "bad or repeated dict entry ['a', 2]"),
        ({"dict": [[1.5, 1]]}, "bad or repeated dict entry [1.5, 1]"),
        ({"dict": [["a"]]}, "bad or repeated dict entry ['a']"),
        ({"dict": [], "torch_metadata": {"": {"v": [1]}}}, "bad torch_metadata {'': {'v': [1]}}"),
    ],
)
def test_read_node_refuses_what_save_never_writes(node: Any, problem: str) -> None:
    with pytest.raises(BadNode) as caught:
        read_node(node)
    assert caught.value.problem == problem


def test_walk_visits_parents_first_in_saved_order_with_paths() -> None:
    visited = [(path, node[0]) for path, node in walk(TREE)]
    assert visited == [
        ((), DICT),
        (("model",), DICT),
        (("model", "w"), TENSOR),
        ((0,), LIST),
        ((0, 0), VALUE),
        ((0, 1), FLOAT),
        ((0, 2), TUPLE),
        ((0, 2, 0), VALUE),
        ((0, 2, 1), TENSOR),
        (("rng",), TENSOR),
    ]


def test_walk_descends_only_where_told() -> None:
    paths = [path for path, _ in walk(TREE, into=lambda node: node[0] == DICT)]
    assert paths == [(), ("model",), ("model", "w"), (0,), ("rng",)]


def test_walk_names_the_path_of_a_damaged_node() -> None:
    damaged = {"dict": [["a", {"list": [1, {"oops": 1}]}]]}
    with pytest.raises(BadNode) as caught:
        list(walk(damaged))
    assert list(reversed(caught.value.path)) == ["a", 1]
    assert caught.value.problem.startswith("unknown node kind 'oops'")


def test_walk_is_bounded_by_max_depth() -> None:
    deep: Any = 1
    for _ in range(MAX_DEPTH + 1):
        deep = {"list": [deep]}
    with pytest.raises(BadNode, match=f"nested more than {MAX_DEPTH} deep") as caught:
        list(walk(deep))
    assert caught.value.path == [0] * MAX_DEPTH


def test_with_tensor_prefix_renames_every_tensor_and_keeps_the_input() -> None:
    before = copy.deepcopy(TREE)
    renamed = with_tensor_prefix(TREE, "part.")
    assert before == TREE
    names = [node[1] for _, node in walk(renamed) if node[0] == TENSOR]
    assert names == ["part.model.w", "part.0.1.1", "part.rng"]
    assert read_node(renamed["dict"][2][1])[3] == "numpy.ndarray:uint32"
    assert read_node(renamed["dict"][0][1])[4] == {"": {"version": 1}}
