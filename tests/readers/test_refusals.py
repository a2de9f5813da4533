"""What save() cannot store without pickle is refused, naming where it sits in the tree."""

from __future__ import annotations

import collections
import re
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

import statevault
from statevault import UnsupportedObjectError


class Opaque:
    pass


class MyTensor(torch.Tensor):
    pass


Point = collections.namedtuple("Point", "x y")


def optimizer_with(value: Any) -> dict[str, Any]:
    return {"optimizer": {"param_groups": [{"lr": 0.1, "foo": value}], "state": {}}}


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (Opaque(), "Opaque"),
        (Point(1, 2), "Point"),
        ({1, 2}, "set"),
        (frozenset(), "frozenset"),
        (b"raw", "bytes"),
        (bytearray(b"x"), "bytearray"),
        (1 + 2j, "complex"),
        (range(3), "range"),
        (torch.float32, "dtype"),
        (torch.device("cpu"), "device"),
        (lambda: 0, "function"),
        (collections.defaultdict(int), "defaultdict"),
        (torch.nn.Linear(1, 1), "Linear"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_unsupported_objects_name_their_path(value: Any, kind: str, tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    with pytest.raises(UnsupportedObjectError) as info:
        statevault.save(optimizer_with(value), path)
    message = str(info.value)
    assert message.startswith("optimizer.param_groups.0.foo: cannot store <class '"), message
    assert kind in message
    assert not path.exists()


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: torch.ones(2).as_subclass(MyTensor), "tensor subclass"),
        (lambda: torch.eye(3).to_sparse(), "layout"),
        (lambda: torch.eye(3).to_sparse_csr(), "layout"),
        (
            lambda: torch.quantize_per_tensor(torch.ones(3), 0.1, 0, torch.quint8),
            "quantized",
        ),
        (
            lambda: torch.nested.nested_tensor([torch.ones(2), torch.ones(3)]),
            "nested tensor",
        ),
        (lambda: torch.empty(3, device="meta"), "meta device"),
        (lambda: torch.zeros(2, dtype=torch.uint8).view(torch.bits8), "dtype torch.bits8"),
    ],
    ids=["subclass", "sparse-coo", "sparse-csr", "quantized", "nested", "meta", "bits8"],
)
def test_unsupported_tensors_name_their_path(make: Any, reason: str, tmp_path: Path) -> None:
    with warnings.catch_warnings():  # torch warns that these tensor kinds are beta/deprecated
        warnings.simplefilter("ignore")
        tensor = make()
    with pytest.raises(
        UnsupportedObjectError,
        match=rf"^model\.layers\.1\.w: cannot store this tensor: it .*({reason})",
    ):
        statevault.save({"model": {"layers": [{}, {"w": tensor}]}}, tmp_path / "t.safetensors")


@pytest.mark.parametrize(
    ("key", "shown"),
    [((1, 2), "a.(1, 2)"), (1.5, "a.1.5"), (True, "a.True"), (None, "a.None"), (b"k", "a.b'k'")],
    ids=["tuple", "float", "bool", "none", "bytes"],
)
def test_dict_keys_must_be_str_or_int(key: Any, shown: str, tmp_path: Path) -> None:
    with pytest.raises(UnsupportedObjectError, match="keys must be str or int") as info:
        statevault.save({"a": {key: torch.ones(1)}}, tmp_path / "k.safetensors")
    assert str(info.value).startswith(shown + ":")


@pytest.mark.parametrize(
    ("metadata", "pattern"),
    [
        ({"a": 1}, r"metadata\['a'\]: .*str -> int"),
        ({"a": None}, r"metadata\['a'\]: .*NoneType"),
        ({"a": {"b": "c"}}, r"metadata\['a'\]: .*json.dumps"),
        ({1: "a"}, r"metadata\[1\]: .*int -> str"),
        ({"statevault": "x"}, r"metadata\['statevault'\]: this key is reserved"),
        ([("a", "b")], r"must be a mapping"),
    ],
)
def test_bad_metadata_is_refused(metadata: Any, pattern: str, tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    with pytest.raises(UnsupportedObjectError, match=pattern):
        statevault.save({"x": torch.ones(1)}, path, metadata=metadata)
    assert not path.exists()


def test_refusal_lists_what_is_supported(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedObjectError) as info:
        statevault.save({"epoch": Opaque()}, tmp_path / "x.safetensors")
    assert re.search(r"tensors, dicts \(str/int keys\), lists, tuples", str(info.value))
    assert isinstance(info.value, TypeError)


def test_root_object_refused_with_root_path(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedObjectError, match=r"^<root>: cannot store"):
        statevault.save(Opaque(), tmp_path / "x.safetensors")


def test_module_inside_state_is_refused_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(
        statevault.UnsupportedObjectError, match=r"model: .*Linear.*module\.state_dict\(\)"
    ):
        statevault.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "x.safetensors")


def test_self_containing_state_is_refused_not_a_recursion_error(tmp_path: Path) -> None:
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(statevault.UnsupportedObjectError, match="nested too deeply"):
        statevault.save({"loop": loop}, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()
