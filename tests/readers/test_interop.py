"""Interop both ways with the reference safetensors library, down to identical bytes."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch

import statevault
from statevault.fileformat.container import encode_header, plan_layout
from statevault.fileformat.dtypes import SPECS


def raw_bytes(tensor: torch.Tensor) -> bytes:
    flat = tensor.resolve_conj().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()


def sample(dtype: torch.dtype, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    if dtype is torch.bool:
        return torch.randint(0, 2, shape, generator=generator).bool()
    count = int(torch.Size(shape).numel()) * dtype.itemsize
    raw = torch.randint(0, 256, (count,), dtype=torch.uint8, generator=generator)
    return raw.view(dtype).reshape(shape)


ALL_DTYPES = sorted(SPECS, key=str)


def test_reference_reader_loads_every_tensor_we_write(tmp_path: Path) -> None:
    state = {f"t.{str(dt)[6:]}": sample(dt, (2, 3), seed=i) for i, dt in enumerate(ALL_DTYPES)}
    state["nested"] = {"deep": [torch.arange(4)]}  # type: ignore[assignment]
    path = tmp_path / "ours.safetensors"
    statevault.save(state, path)
    seen = safetensors.torch.load_file(path)
    assert set(seen) == {k for k in state if k != "nested"} | {"nested.deep.0"}
    assert torch.equal(seen["nested.deep.0"], torch.arange(4))
    for dt in ALL_DTYPES:
        name = f"t.{str(dt)[6:]}"
        original, found = state[name], seen[name]
        assert isinstance(original, torch.Tensor)
        spec = SPECS[dt]
        if not spec.encoded:
            assert found.dtype == dt and found.shape == original.shape, name
            assert raw_bytes(found) == raw_bytes(original), name
        elif spec.trailing:  # complex stored as (..., 2) real pairs
            assert found.shape == (*original.shape, 2), name
            assert torch.equal(found, torch.view_as_real(original)), name
        else:  # exotic byte-sized floats stored as their raw bytes
            assert found.dtype == torch.uint8 and found.shape == original.shape, name
            assert raw_bytes(found) == raw_bytes(original), name


def test_reference_reader_sees_our_metadata_and_format_pt(tmp_path: Path) -> None:
    path = tmp_path / "meta.safetensors"
    statevault.save({"x": torch.ones(2)}, path, metadata={"run": "r1"})
    with safetensors.safe_open(path, framework="pt") as reference:
        metadata = reference.metadata()
    assert metadata["run"] == "r1" and metadata["format"] == "pt"
    assert json.loads(metadata["statevault"])["version"] == 3


def reference_dtypes() -> list[torch.dtype]:
    # dtypes the reference writer itself can save; statevault must read all of them
    names = [
        "float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8",
        "uint8", "uint16", "uint32", "uint64", "bool", "complex64", "float8_e4m3fn",
        "float8_e5m2", "float8_e8m0fnu", "float8_e4m3fnuz", "float8_e5m2fnuz",
    ]  # fmt: skip
    return [getattr(torch, name) for name in names]


@pytest.mark.parametrize("dtype", reference_dtypes(), ids=str)
def test_we_read_each_dtype_the_reference_writes(dtype: torch.dtype, tmp_path: Path) -> None:
    tensors = {"a": sample(dtype, (3, 4), seed=1), "scalar": sample(dtype, (), seed=2)}
    path = tmp_path / "ref.safetensors"
    try:
        safetensors.torch.save_file(tensors, path)
    except (TypeError, KeyError, ValueError) as exc:  # pragma: no cover - depends on version
        pytest.fail(f"reference safetensors cannot write {dtype}: {exc}")
    loaded = statevault.load(path)
    assert set(loaded) == set(tensors)
    for name, original in tensors.items():
        assert loaded[name].dtype == dtype and loaded[name].shape == original.shape
        assert raw_bytes(loaded[name]) == raw_bytes(original)


def test_we_read_reference_file_with_metadata(tmp_path: Path) -> None:
    tensors = {
        "b.weight": torch.randn(3, 2),
        "a.bias": torch.arange(3, dtype=torch.int16),
        "empty": torch.empty(0, 5),
    }
    path = tmp_path / "ref.safetensors"
    safetensors.torch.save_file(tensors, path, metadata={"format": "pt", "author": "ref"})
    with statevault.Checkpoint(path) as checkpoint:
        assert dict(checkpoint.metadata) == {"format": "pt", "author": "ref"}
        assert checkpoint.format_version is None
        assert not checkpoint.has_checksums
        assert dict(checkpoint.aliases) == {}
        assert {n: i.shape for n, i in checkpoint.tensors.items()} == {
            n: tuple(t.shape) for n, t in tensors.items()
        }
        loaded = checkpoint.load()
    assert type(loaded) is dict
    for name, tensor in tensors.items():
        assert torch.equal(loaded[name], tensor)


def test_load_into_from_a_reference_file(tmp_path: Path) -> None:
    source = torch.nn.Linear(3, 2)
    path = tmp_path / "ref.safetensors"
    safetensors.torch.save_file(source.state_dict(), path)
    target = torch.nn.Linear(3, 2)
    report = statevault.load_into(target, path)
    assert report.ok
    assert torch.equal(target.weight, source.weight) and torch.equal(target.bias, source.bias)


def test_we_read_reference_bytes_from_memory_api(tmp_path: Path) -> None:
    blob = safetensors.torch.save({"z": torch.arange(10, dtype=torch.float64)})
    path = tmp_path / "blob.safetensors"
    path.write_bytes(blob)
    assert torch.equal(statevault.load(path)["z"], torch.arange(10, dtype=torch.float64))


# -- byte-level conformance of our codec ------------------------------------------------------


def our_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None) -> bytes:
    """Header from our codec, then each tensor's bytes in the order our layout puts them."""
    entries = plan_layout(
        (name, SPECS[t.dtype].code, tuple(t.shape), t.numel() * t.element_size())
        for name, t in tensors.items()
    )
    data = bytearray()
    for entry in entries:
        assert entry.start == len(data)
        data += raw_bytes(tensors[entry.name])
    return encode_header(entries, metadata) + bytes(data)


CONFORMANCE_TENSORS = {
    # insertion order differs from name order and from the layout's dtype order
    "zeta": torch.arange(6, dtype=torch.int8),
    "alpha": torch.randn(3, 5, generator=torch.Generator().manual_seed(0)),
    "Mid.bias": torch.arange(7, dtype=torch.float16),
    "beta": torch.arange(5, dtype=torch.float64),
    "a.10": torch.ones(2, dtype=torch.bfloat16),
    "a.9": torch.tensor([True, False, True]),
    "gamma": torch.arange(4, dtype=torch.int64).reshape(2, 2),
    "scalar": torch.tensor(1.5),
    "empty": torch.empty(0, 3, dtype=torch.int32),
    "u16": torch.arange(3, dtype=torch.int32).to(torch.uint16),
    "fp8": torch.zeros(4, dtype=torch.float8_e4m3fn),
    "c64": torch.complex(torch.ones(2), torch.zeros(2)),
}


@pytest.mark.parametrize(
    "metadata", [None, {"format": "pt"}, {"key with \"quotes\" and ünïcode": "välue\n"}],
    ids=["none", "format", "unicode"],
)  # fmt: skip
def test_our_codec_matches_reference_bytes(metadata: dict[str, str] | None) -> None:
    expected = safetensors.torch.save(CONFORMANCE_TENSORS, metadata=metadata)
    assert our_bytes(CONFORMANCE_TENSORS, metadata) == expected


@pytest.mark.parametrize("count", [0, 1, 2, 3])
def test_header_padding_matches_reference(count: int) -> None:
    # different name lengths exercise every padding remainder
    tensors = {"n" * (i + 1): torch.ones(i + 1) for i in range(count)}
    expected = safetensors.torch.save(tensors)
    assert our_bytes(tensors, None) == expected
    (length,) = struct.unpack("<Q", expected[:8])
    assert length % 8 == 0


def test_empty_metadata_is_omitted_like_reference() -> None:
    tensors = {"x": torch.ones(1)}
    assert our_bytes(tensors, {}) == safetensors.torch.save(tensors)
