"""The tree codec's refusals asserted whole (type, path, value) and its depth limit on both
sides; what ``flatten`` stores for numpy values and torch's version tables, exactly."""

from __future__ import annotations

import inspect
import math
import sys
from collections import OrderedDict
from typing import Any

import numpy as np
import pytest
import torch

from statevault.errors import HeaderError, UnsupportedObjectError
from statevault.fileformat.skeleton import MAX_DEPTH
from statevault.fileformat.tree import check_tree, flatten, numpy_names, unflatten

SURROGATE_FIX = (
    "contains a lone surrogate, which UTF-8 (and so the file's JSON header) cannot hold; "
    "rename it, e.g. with name.encode('utf-8', 'replace').decode('utf-8')"
)


def refusal(state: Any) -> str:
    with pytest.raises(UnsupportedObjectError) as caught:
        flatten(state)
    assert type(caught.value) is UnsupportedObjectError
    return str(caught.value)


def damage(skeleton: Any, tensors: dict[str, torch.Tensor] | None = None) -> str:
    with pytest.raises(HeaderError) as caught:
        unflatten(skeleton, (tensors or {}).__getitem__)
    assert type(caught.value) is HeaderError
    return str(caught.value)


def nested_lists(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def test_what_flatten_refuses_is_named_by_path() -> None:
    assert refusal({"a": ["x\udc80"]}) == f"a.0: string 'x\\udc80' {SURROGATE_FIX}"
    assert refusal({"a": {"k\udc80": 1}}) == f"a.k\\udc80: key 'k\\udc80' {SURROGATE_FIX}"
    assert refusal({"a": {1.5: 1}}) == (
        "a.1.5: dict key 1.5 of <class 'float'> is not supported; keys must be str or int"
    )
    assert refusal({"a": [object()]}) == (
        "a.0: cannot store <class 'object'> without pickle. statevault stores tensors, dicts "
        "(str/int keys), lists, tuples, int, float, bool, str and None; convert this value to "
        "one of those (e.g. dict(x), x.tolist(), float(x))"
    )
    assert refusal({"m": torch.nn.Linear(1, 1)}) == (
        "m: cannot store <class 'torch.nn.modules.linear.Linear'> (an nn.Module) inside other "
        "state; store its weights instead: module.state_dict()"
    )
    assert refusal({"n": np.array(["a"])}) == (
        "n: cannot store a numpy ndarray of dtype '<U1' (str32) without pickle; statevault "
        "stores numpy values of dtype bool, complex128, complex64, float16, float32, float64, "
        "int16, int32, int64, int8, uint16, uint32, uint64, uint8. Convert it (e.g. x.tolist(), "
        "x.astype(numpy.float64))"
    )


def test_non_ascii_text_that_utf8_holds_is_kept() -> None:
    skeleton, _ = flatten({"ключ": ["значение", "é"], "t": torch.zeros(1)})
    assert skeleton == {"dict": [["ключ", {"list": ["значение", "é"]}], ["t", {"tensor": "t"}]]}


def test_flatten_nests_up_to_max_depth_containers() -> None:
    assert MAX_DEPTH == 100
    skeleton, _ = flatten(nested_lists(MAX_DEPTH))
    assert unflatten(skeleton, {}.__getitem__) == nested_lists(MAX_DEPTH)
    path = ".".join(["0"] * MAX_DEPTH)
    assert refusal(nested_lists(MAX_DEPTH + 1)) == (
        f"{path}: state is nested too deeply (over 100 containers), more than statevault "
        "stores; flatten that part, or check it for a container that contains itself"
    )
    for kind in (dict, tuple, torch.Size):
        deep: Any = nested_lists(MAX_DEPTH)
        value = {0: deep} if kind is dict else kind([1])
        deep_inner = deep
        for _ in range(MAX_DEPTH - 1):
            deep_inner = deep_inner[0]
        deep_inner[0] = value
        assert "state is nested too deeply (over 100 containers)" in refusal(deep)


def test_a_self_containing_state_is_refused_not_a_recursion_error() -> None:
    loop: list[Any] = []
    loop.append(loop)
    assert "state is nested too deeply" in refusal(loop)


def test_unflatten_nests_up_to_max_depth_containers() -> None:
    skeleton: Any = 1
    for _ in range(MAX_DEPTH):
        skeleton = {"list": [skeleton]}
    assert unflatten(skeleton, {}.__getitem__) == nested_lists(MAX_DEPTH)
    path = ".".join(["0"] * MAX_DEPTH)
    assert damage({"list": [skeleton]}) == (
        f"statevault tree in header is damaged at node {path}: containers are nested more "
        "than 100 deep"
    )


def test_damaged_nodes_are_named_by_path() -> None:
    prefix = "statevault tree in header is damaged at node"
    assert damage({"dict": [["a", {"list": [{"tensor": "x"}]}]]}) == (
        f"{prefix} a.0: refers to unknown tensor 'x', which the file does not hold"
    )
    assert damage({"tuple": [1, {"dict": [[3, {"tensor": "y"}]]}]}) == (
        f"{prefix} 1.3: refers to unknown tensor 'y', which the file does not hold"
    )
    x = {"x": torch.zeros(2)}
    assert damage({"tensor": "x", "type": "numpy.ndarray:int32"}, x) == (
        f"{prefix} <root>: numpy int32 value stored as a torch.float32 tensor"
    )
    assert damage({"tensor": "x", "type": "numpy.scalar:float32"}, x) == (
        f"{prefix} <root>: numpy scalar stored with shape [2]"
    )
    for kind in ("numpy.matrix:float32", "numpy.ndarray:object", "numpy.ndarray"):
        assert damage({"tensor": "x", "type": kind}, x) == (
            f"{prefix} <root>: unknown tensor type {kind!r}"
        )
    with pytest.raises(HeaderError) as caught:
        check_tree({"list": [{"tensor": "a"}, {"tensor": "b"}]}, {"a"})
    assert str(caught.value) == (
        f"{prefix} 1: refers to unknown tensor 'b', which the file does not hold"
    )
    check_tree({"list": [{"tensor": "a", "type": "numpy.ndarray:int8"}]}, {"a"})


def test_numpy_values_come_back_with_their_dtype_and_kind() -> None:
    scalar, reversed_big_endian = np.float32(1.5), np.arange(3, dtype=">i4")[::-1]
    skeleton, tensors = flatten({"s": scalar, "a": reversed_big_endian, "f": float("-inf")})
    assert skeleton == {
        "dict": [
            ["s", {"tensor": "s", "type": "numpy.scalar:float32"}],
            ["a", {"tensor": "a", "type": "numpy.ndarray:int32"}],
            ["f", {"float": "-inf"}],
        ]
    }
    assert tensors["a"].tolist() == [2, 1, 0] and tensors["a"].dtype == torch.int32
    assert reversed_big_endian.tolist() == [2, 1, 0]  # the caller's array is not changed
    back = unflatten(skeleton, tensors.__getitem__)
    assert type(back["s"]) is np.float32 and back["s"] == 1.5
    assert type(back["a"]) is np.ndarray and back["a"].dtype == np.int32
    assert back["a"].tolist() == [2, 1, 0] and back["f"] == float("-inf")
    assert numpy_names(skeleton) == {"s", "a"}
    shared = np.arange(4, dtype=np.int64)
    assert flatten({"x": shared})[1]["x"].data_ptr() == shared.ctypes.data  # no copy


def test_version_tables_keep_only_plain_json_values() -> None:
    versions = OrderedDict(a=torch.zeros(1))
    versions._metadata = {  # type: ignore[attr-defined]
        "": {"version": 2, "x": 1.5, "b": True, "s": "t"},
        "bad": 3,
        4: {"v": [1]},
    }
    skeleton, _ = flatten({"m": versions})
    assert skeleton["dict"][0][1] == {
        "dict": [["a", {"tensor": "m.a"}]],
        "torch_metadata": {"": {"version": 2, "b": True, "s": "t"}, "4": {}},
    }
    back = unflatten(skeleton, {"m.a": torch.zeros(1)}.__getitem__)["m"]
    assert type(back) is OrderedDict and back._metadata == {  # type: ignore[attr-defined]
        "": {"version": 2, "b": True, "s": "t"},
        "4": {},
    }
    plain = unflatten({"dict": [["a", 1]]}, {}.__getitem__)
    assert type(plain) is dict and not hasattr(plain, "_metadata")


def test_unflatten_bounds_dict_nesting_the_same_way() -> None:
    skeleton: Any = 1
    for _ in range(MAX_DEPTH):
        skeleton = {"dict": [["k", skeleton]]}
    value = unflatten(skeleton, {}.__getitem__)
    for _ in range(MAX_DEPTH):
        value = value["k"]
    assert value == 1
    path = ".".join(["k"] * MAX_DEPTH)
    assert damage({"dict": [["k", skeleton]]}) == (
        f"statevault tree in header is damaged at node {path}: containers are nested more "
        "than 100 deep"
    )


def test_a_module_is_flattened_as_its_state_dict() -> None:
    linear = torch.nn.Linear(2, 1)
    skeleton, tensors = flatten(linear)
    assert skeleton["dict"] == [["weight", {"tensor": "weight"}], ["bias", {"tensor": "bias"}]]
    assert tensors["weight"].data_ptr() == linear.weight.data_ptr()  # its state, not a copy


def test_a_fortran_ordered_array_is_stored_c_contiguous() -> None:
    fortran = np.asfortranarray(np.arange(6, dtype=np.int16).reshape(2, 3))
    tensor = flatten({"x": fortran})[1]["x"]
    assert tensor.is_contiguous() and tensor.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert fortran.flags.f_contiguous  # the caller's array is untouched


def test_python_recursion_limit_is_refused_by_name() -> None:
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(len(inspect.stack()) + 60)
    try:
        with pytest.raises(UnsupportedObjectError) as caught:
            flatten(nested_lists(80))
    finally:
        sys.setrecursionlimit(limit)
    assert str(caught.value) == (
        "state is nested too deeply to store (Python's recursion limit was reached); flatten "
        "it, or check it for a container that contains itself"
    )


class _NoNumpy:
    """A tensor of a torch built without numpy: .numpy() raises RuntimeError."""

    def detach(self) -> _NoNumpy:
        return self

    def cpu(self) -> _NoNumpy:
        return self

    def numpy(self) -> Any:
        raise RuntimeError("Numpy is not available")


def test_a_numpy_value_without_numpy_says_so() -> None:
    with pytest.raises(UnsupportedObjectError) as caught:
        unflatten({"tensor": "x", "type": "numpy.ndarray:int32"}, {"x": _NoNumpy()}.__getitem__)
    assert str(caught.value) == (
        "this checkpoint holds a numpy value (numpy.ndarray:int32); loading it needs numpy "
        "(Numpy is not available)"
    )


def test_non_finite_floats_are_stored_by_name() -> None:
    skeleton, _ = flatten([math.nan, math.inf, -math.inf, 1.5])
    assert skeleton == {"list": [{"float": "nan"}, {"float": "inf"}, {"float": "-inf"}, 1.5]}
    back = unflatten(skeleton, {}.__getitem__)
    assert math.isnan(back[0]) and back[1:] == [math.inf, -math.inf, 1.5]
