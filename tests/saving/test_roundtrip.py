"""save -> load keeps every dtype, edge shape, nested structure and tie exactly as saved."""

from __future__ import annotations

import copy
import math
import struct
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import safetensors
import safetensors.torch
import torch
from torch import nn

import statevault
from statevault.fileformat.dtypes import SPECS

# Every dtype the issue names; the test fails if this torch lacks one or statevault drops one.
REQUIRED_DTYPES = [
    "float64", "float32", "float16", "bfloat16",
    "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu",
    "float4_e2m1fn_x2", "complex64", "complex128", "complex32", "bool",
    "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
]  # fmt: skip


def raw_bytes(tensor: torch.Tensor) -> bytes:
    """The tensor's element bytes in logical (row-major) order, whatever its dtype."""
    flat = tensor.resolve_conj().resolve_neg().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()


def random_tensor(dtype: torch.dtype, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Random bit patterns of ``dtype`` (bools restricted to 0/1, the only valid values)."""
    generator = torch.Generator().manual_seed(seed)
    numel = math.prod(shape)
    if dtype is torch.bool:
        return torch.randint(0, 2, shape, generator=generator).bool()
    raw = torch.randint(0, 256, (numel * dtype.itemsize,), dtype=torch.uint8, generator=generator)
    return raw.view(dtype).reshape(shape)


def roundtrip(obj: Any, tmp_path: Path, **save_options: Any) -> Any:
    path = tmp_path / "state.safetensors"
    statevault.save(obj, path, **save_options)
    return statevault.load(path)


def assert_same_tensor(found: torch.Tensor, expected: torch.Tensor) -> None:
    assert type(found) is torch.Tensor
    assert found.dtype == expected.dtype
    assert found.shape == expected.shape
    assert raw_bytes(found) == raw_bytes(expected)


def test_every_required_dtype_is_supported() -> None:
    missing = [name for name in REQUIRED_DTYPES if getattr(torch, name, None) not in SPECS]
    assert missing == []


@pytest.mark.parametrize("name", REQUIRED_DTYPES)
def test_dtype_roundtrips_bit_exactly(name: str, tmp_path: Path) -> None:
    dtype = getattr(torch, name)
    original = random_tensor(dtype, (3, 5), seed=len(name))
    back = roundtrip({"x": original, "y": original[1:]}, tmp_path)
    assert_same_tensor(back["x"], original)
    assert_same_tensor(back["y"], original[1:])


def test_all_dtypes_in_one_file(tmp_path: Path) -> None:
    state = {
        name: random_tensor(getattr(torch, name), (7,), seed=i)
        for i, name in enumerate(REQUIRED_DTYPES)
    }
    back = roundtrip(state, tmp_path)
    assert list(back) == list(state)
    for name, tensor in state.items():
        assert_same_tensor(back[name], tensor)


def _floats_from_bits(dtype: torch.dtype, fmt: str, bits: list[int]) -> torch.Tensor:
    packed = b"".join(struct.pack(fmt, b) for b in bits)
    return torch.frombuffer(bytearray(packed), dtype=torch.uint8).view(dtype).clone()


@pytest.mark.parametrize(
    ("dtype", "fmt", "bits"),
    [
        # quiet NaN with payload, signalling NaN, negative NaN, -0.0, +inf, denormal
        (torch.float64, "<Q", [0x7FF8_0000_DEAD_BEEF, 0x7FF0_0000_0000_0001,
                               0xFFF8_0000_0000_0042, 0x8000_0000_0000_0000,
                               0x7FF0_0000_0000_0000, 0x0000_0000_0000_0001]),
        (torch.float32, "<I", [0x7FC0_1234, 0x7F80_0001, 0xFFC0_0042, 0x8000_0000,
                               0x7F80_0000, 0x0000_0001]),
        (torch.float16, "<H", [0x7E01, 0x7C01, 0xFE42, 0x8000, 0x7C00, 0x0001]),
        (torch.bfloat16, "<H", [0x7FC1, 0x7F81, 0xFFC2, 0x8000, 0x7F80, 0x0001]),
    ],
)  # fmt: skip
def test_nan_payloads_and_negative_zero_survive(
    dtype: torch.dtype, fmt: str, bits: list[int], tmp_path: Path
) -> None:
    original = _floats_from_bits(dtype, fmt, bits)
    assert torch.isnan(original).sum() == 3 and torch.signbit(original[3])
    back = roundtrip({"x": original}, tmp_path)["x"]
    assert_same_tensor(back, original)
    assert torch.signbit(back[3]) and back[3] == 0


@pytest.mark.parametrize(
    "tensor",
    [
        torch.tensor(3.5),  # 0-d
        torch.tensor(7, dtype=torch.int64),
        torch.tensor(True),
        torch.tensor(1 + 2j, dtype=torch.complex128),
        torch.empty(0),
        torch.empty(3, 0, 2, dtype=torch.float16),
        torch.empty(0, 4, dtype=torch.complex128),
        torch.ones(1, 1, 1, 1, dtype=torch.uint64),
    ],
    ids=["0d-f32", "0d-i64", "0d-bool", "0d-c128", "empty", "empty-3d", "empty-c128", "ones-4d"],
)
def test_edge_shapes(tensor: torch.Tensor, tmp_path: Path) -> None:
    back = roundtrip({"t": tensor}, tmp_path)["t"]
    assert_same_tensor(back, tensor)


def test_non_contiguous_views_are_stored_contiguous(tmp_path: Path) -> None:
    base = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    views = {
        "transposed": base.t(),
        "strided": base[::2, 1::3],
        "column": base[:, 4],
        "expanded": torch.arange(3.0).expand(4, 3),
        "negative_view": torch.arange(5.0)._neg_view(),
    }
    assert not any(v.is_contiguous() for k, v in views.items() if k != "negative_view")
    path = tmp_path / "views.safetensors"
    statevault.save(views, path)
    back = statevault.load(path)
    for name, view in views.items():
        assert back[name].is_contiguous()
        assert not back[name].is_neg()
        assert torch.equal(back[name], view.resolve_neg()), name
    # what's on disk is the plain row-major data, as any safetensors reader sees it
    reference = safetensors.torch.load_file(path)
    assert torch.equal(reference["transposed"], base.t().contiguous())
    assert torch.equal(reference["strided"], base[::2, 1::3].contiguous())


def test_conjugate_bit_is_resolved(tmp_path: Path) -> None:
    z = torch.complex(torch.arange(4.0), torch.arange(4.0) + 10)
    conj = z.conj()
    assert conj.is_conj()
    back = roundtrip({"z": conj, "z128": z.to(torch.complex128).conj()}, tmp_path)
    assert not back["z"].is_conj()
    assert torch.equal(back["z"].imag, -(torch.arange(4.0) + 10))
    assert torch.equal(back["z128"], z.to(torch.complex128).conj().resolve_conj())


def test_conj_and_plain_view_of_same_storage_are_not_merged(tmp_path: Path) -> None:
    z = torch.complex(torch.arange(3.0), torch.ones(3))
    back = roundtrip({"plain": z, "conj": z.conj()}, tmp_path)
    assert torch.equal(back["plain"].imag, torch.ones(3))
    assert torch.equal(back["conj"].imag, -torch.ones(3))


def test_view_of_storage_stores_only_what_is_visible(tmp_path: Path) -> None:
    big = torch.arange(1_000_000, dtype=torch.float32)
    path = tmp_path / "slice.safetensors"
    statevault.save({"slice": big[10:20]}, path)
    assert path.stat().st_size < 10_000
    assert torch.equal(statevault.load(path)["slice"], big[10:20])


def test_overlapping_but_distinct_views_are_stored_separately(tmp_path: Path) -> None:
    base = torch.arange(10.0)
    back = roundtrip({"a": base[:6], "b": base[2:8], "c": base[:6]}, tmp_path)
    assert torch.equal(back["a"], base[:6]) and torch.equal(back["b"], base[2:8])
    assert back["a"] is back["c"]  # identical view = tie


NESTED: dict[Any, Any] = {
    "name": "run-7",
    "epoch": 3,
    7: "int key",
    -1: {"negative": True},
    "floats": [0.5, -0.0, float("nan"), float("inf"), float("-inf"), 1e308, 5e-324],
    "flags": (True, False, None),
    "nested": {"list": [1, [2, [3, (4, "five")]]], "empty_list": [], "empty_tuple": ()},
    "empty": {},
    "tensors": {"w": torch.arange(6.0).reshape(2, 3), 0: torch.tensor([1, 2, 3])},
    "big_int": 2**62,
    "unicode": 'héllo ✓ \u2028 "quoted" \\ back',
}


def assert_deep_equal(found: Any, expected: Any, path: str = "<root>") -> None:
    """Equality that checks exact types, NaN-aware floats, -0.0 and tensor bytes."""
    assert type(found) is type(expected) or (
        isinstance(expected, dict) and isinstance(found, dict)
    ), f"{path}: {type(found)} != {type(expected)}"
    if isinstance(expected, torch.Tensor):
        assert_same_tensor(found, expected)
    elif isinstance(expected, dict):
        assert list(found.keys()) == list(expected.keys()), path
        for key in expected:
            assert type(key) is type(next(k for k in found if k == key)), f"{path}.{key}"
            assert_deep_equal(found[key], expected[key], f"{path}.{key}")
    elif isinstance(expected, (list, tuple)):
        assert len(found) == len(expected), path
        for i, (f, e) in enumerate(zip(found, expected, strict=True)):
            assert_deep_equal(f, e, f"{path}.{i}")
    elif isinstance(expected, float):
        assert struct.pack("<d", found) == struct.pack("<d", expected) or (
            math.isnan(found) and math.isnan(expected)
        ), f"{path}: {found!r} != {expected!r}"
    else:
        assert found == expected, path


def test_nested_state_roundtrips_with_exact_types(tmp_path: Path) -> None:
    back = roundtrip(NESTED, tmp_path)
    assert_deep_equal(back, NESTED)
    assert isinstance(back["flags"], tuple)
    assert isinstance(back["nested"]["list"][1][1][1], tuple)
    assert 7 in back and "7" not in back
    assert math.copysign(1.0, back["floats"][1]) == -1.0


@pytest.mark.parametrize(
    "value", [1, 0.25, "text", None, True, [1, 2], (1, "a"), torch.arange(3)], ids=repr
)
def test_root_need_not_be_a_dict(value: Any, tmp_path: Path) -> None:
    assert_deep_equal(roundtrip(value, tmp_path), value)


def test_keys_that_flatten_to_the_same_name_stay_apart(tmp_path: Path) -> None:
    state = {"a.b": torch.zeros(2), "a": {"b": torch.ones(2)}, "0": torch.full((1,), 5.0)}
    state[0] = torch.full((1,), 9.0)  # type: ignore[index]
    back = roundtrip(state, tmp_path)
    assert_deep_equal(back, state)


def test_save_never_mutates_the_callers_objects(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    state = {
        "model": model.state_dict(),
        "transposed": torch.arange(6.0).reshape(2, 3).t(),
        "conj": torch.complex(torch.ones(2), torch.ones(2)).conj(),
        "tree": copy.deepcopy(NESTED),
    }
    metadata = {"run": "a", "note": "b"}
    before_state = copy.deepcopy(state)
    before_metadata = dict(metadata)
    ids_before = {k: id(v) for k, v in state.items()}
    statevault.save(state, tmp_path / "s.safetensors", metadata=metadata)
    assert metadata == before_metadata and list(metadata) == ["run", "note"]
    assert {k: id(v) for k, v in state.items()} == ids_before
    assert_deep_equal(state, before_state)
    assert state["conj"].is_conj() and not state["transposed"].is_contiguous()
    assert state["model"]._metadata == before_state["model"]._metadata  # type: ignore[attr-defined]


def test_module_state_dict_keeps_torch_version_table(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    back = roundtrip(model, tmp_path)
    assert isinstance(back, OrderedDict)
    assert back._metadata == model.state_dict()._metadata  # type: ignore[attr-defined]
    fresh = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    fresh.load_state_dict(back)
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value)


def test_user_metadata_roundtrips(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    statevault.save({"x": torch.ones(1)}, path, metadata={"run": "r1", "json": '{"a": 1}'})
    with statevault.Checkpoint(path) as checkpoint:
        assert dict(checkpoint.metadata) == {"format": "pt", "run": "r1", "json": '{"a": 1}'}
        assert checkpoint.format_version == 3


def test_checksum_false_still_loads_and_has_no_checksums(tmp_path: Path) -> None:
    path = tmp_path / "n.safetensors"
    statevault.save({"x": torch.arange(5.0)}, path, checksum=False, fsync=False)
    with statevault.Checkpoint(path) as checkpoint:
        assert not checkpoint.has_checksums
        assert checkpoint.tensors["x"].checksum is None
    assert torch.equal(statevault.load(path)["x"], torch.arange(5.0))


def test_large_tensor_crosses_chunk_boundaries(tmp_path: Path) -> None:
    # 20 MB: several 8 MiB read/write chunks and the threaded read path
    big = torch.randn(5_000_000, generator=torch.Generator().manual_seed(1))
    small = [torch.full((i + 1,), float(i)) for i in range(50)]
    back = roundtrip({"big": big, "small": small}, tmp_path)
    assert raw_bytes(back["big"]) == raw_bytes(big)
    assert_deep_equal(back["small"], small)


# -- tied weights ----------------------------------------------------------------------------


class TiedLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, 4)
        self.body = nn.Linear(4, 4)
        self.decoder = nn.Linear(4, 11, bias=False)
        self.decoder.weight = self.embed.weight


def test_tied_weight_is_stored_once(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TiedLM()
    path = tmp_path / "tied.safetensors"
    statevault.save(model, path)
    with statevault.Checkpoint(path) as checkpoint:
        assert dict(checkpoint.aliases) == {"decoder.weight": "embed.weight"}
        assert "decoder.weight" not in checkpoint.tensors
        assert checkpoint.resolve("decoder.weight").name == "embed.weight"
    with safetensors.safe_open(path, framework="pt") as reference:
        assert sorted(reference.keys()) == ["body.bias", "body.weight", "embed.weight"]
        data_bytes = sum(info.nbytes for info in checkpoint.tensors.values())
    weights = model.embed.weight.nelement() + model.body.weight.nelement() + 4
    assert data_bytes == weights * 4


def test_load_returns_one_shared_tensor_for_tied_names(tmp_path: Path) -> None:
    model = TiedLM()
    state = roundtrip(model, tmp_path)
    assert state["decoder.weight"] is state["embed.weight"]
    assert torch.equal(state["embed.weight"], model.embed.weight.detach())


def test_load_into_keeps_tie_in_fresh_model(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = TiedLM()
    path = tmp_path / "tied.safetensors"
    statevault.save(model, path)
    torch.manual_seed(2)
    fresh = TiedLM()
    assert not torch.equal(fresh.embed.weight, model.embed.weight)
    statevault.load_into(fresh, path)
    assert fresh.decoder.weight.data_ptr() == fresh.embed.weight.data_ptr()
    assert fresh.decoder.weight is fresh.embed.weight
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    x = torch.tensor([[1, 5, 10]])
    assert torch.equal(
        fresh.decoder(fresh.body(fresh.embed(x))), model.decoder(model.body(model.embed(x)))
    )


def test_tie_across_nested_state(tmp_path: Path) -> None:
    shared = torch.arange(4.0)
    back = roundtrip({"a": {"w": shared}, "b": [shared, shared.clone()]}, tmp_path)
    assert back["a"]["w"] is back["b"][0]
    assert back["b"][1] is not back["a"]["w"]
    assert torch.equal(back["b"][1], shared)
