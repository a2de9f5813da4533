"""numpy arrays and scalars are stored as tensors and come back as numpy, dtype and all."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import statevault
from statevault import UnsupportedObjectError


@pytest.mark.parametrize(
    "dtype",
    [
        *("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"),
        *("float16", "float32", "float64", "complex64", "complex128"),
    ],
)
def test_arrays_and_scalars_of_every_numeric_dtype(dtype: str, tmp_path: Path) -> None:
    array = (np.arange(12) % 7).astype(dtype).reshape(3, 4)
    scalar = array.reshape(-1)[5]
    path = tmp_path / "n.safetensors"
    statevault.save({"a": array, "s": scalar, "empty": np.zeros((0, 2), dtype)}, path)
    back = statevault.load(path)
    assert type(back["a"]) is np.ndarray and back["a"].dtype == np.dtype(dtype)
    assert back["a"].shape == (3, 4) and np.array_equal(back["a"], array)
    assert type(back["s"]) is type(scalar) and back["s"] == scalar
    assert back["empty"].shape == (0, 2) and back["empty"].dtype == np.dtype(dtype)


def test_numpy_rng_state_resumes_bit_exact(tmp_path: Path) -> None:
    rng = np.random.RandomState(1234)
    rng.random_sample(10)  # a position inside the state, and a cached gaussian
    rng.standard_normal()
    state = {"numpy": rng.get_state(), "python": random.Random(5).getstate()}
    statevault.save(state, tmp_path / "rng.safetensors")
    back = statevault.load(tmp_path / "rng.safetensors")
    assert back["numpy"][0] == "MT19937" and back["numpy"][1].dtype == np.uint32
    resumed = np.random.RandomState()
    resumed.set_state(back["numpy"])
    assert np.array_equal(resumed.random_sample(50), rng.random_sample(50))
    python = random.Random()
    python.setstate(back["python"])
    expected = random.Random()
    expected.setstate(state["python"])
    assert [python.random() for _ in range(5)] == [expected.random() for _ in range(5)]


def test_odd_layouts_are_stored_by_value_and_the_callers_array_is_untouched(
    tmp_path: Path,
) -> None:
    base = np.arange(20, dtype=np.float32).reshape(4, 5)
    strided = base[:, ::2]
    readonly = np.frombuffer(b"\x01\x02\x03\x04", dtype=np.uint8)
    big_endian = np.arange(3, dtype=">i4")
    before = base.copy()
    statevault.save({"s": strided, "r": readonly, "b": big_endian}, tmp_path / "o.safetensors")
    back = statevault.load(tmp_path / "o.safetensors")
    assert np.array_equal(back["s"], strided) and np.array_equal(back["r"], readonly)
    assert np.array_equal(back["b"], big_endian) and back["b"].dtype == np.int32
    assert np.array_equal(base, before) and not readonly.flags.writeable


@pytest.mark.parametrize(
    "value",
    [
        np.array(["a", "b"]),
        np.array([object()], dtype=object),
        np.array([b"x"]),
        np.datetime64("2024-01-01"),
        np.zeros(2, dtype=[("x", "i4")]),
    ],
    ids=["unicode", "object", "bytes", "datetime", "structured"],
)
def test_unsupported_numpy_dtypes_are_refused_with_their_path(value: Any, tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    with pytest.raises(UnsupportedObjectError, match=r"^state\.rng\.1: cannot store a numpy"):
        statevault.save({"state": {"rng": [1, value]}}, path)
    assert not path.exists()


def test_other_readers_see_a_plain_tensor(tmp_path: Path) -> None:
    import safetensors.torch

    statevault.save({"a": np.arange(4, dtype=np.uint32)}, tmp_path / "n.safetensors")
    plain = safetensors.torch.load_file(tmp_path / "n.safetensors")
    assert plain["a"].dtype == torch.uint32 and plain["a"].tolist() == [0, 1, 2, 3]
    summary = statevault.inspect(tmp_path / "n.safetensors")
    assert [t.name for t in summary.tensors] == ["a"]


def test_convert_dtype_leaves_numpy_values_as_they_are(tmp_path: Path) -> None:
    state = {"w": torch.ones(2, dtype=torch.float64), "gauss": np.float64(0.25),
             "noise": [np.arange(3, dtype=np.float32)]}  # fmt: skip
    statevault.save(state, tmp_path / "a.safetensors")
    statevault.convert(tmp_path / "a.safetensors", tmp_path / "b.safetensors", dtype="bf16")
    back = statevault.load(tmp_path / "b.safetensors")
    assert back["w"].dtype == torch.bfloat16
    assert type(back["gauss"]) is np.float64 and back["gauss"] == 0.25
    assert back["noise"][0].dtype == np.float32 and np.array_equal(back["noise"][0], np.arange(3))
