"""statevault.safetensors against safetensors.torch: the same behaviours, checked on both.

Most tests take ``api``, once as our module and once as the reference, so every assertion
about what safetensors does is checked against safetensors itself; files written by one
are read by the other.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import safetensors
import safetensors.torch
import torch

import statevault
import statevault.safetensors as dropin

REFERENCE = SimpleNamespace(
    name="safetensors",
    save_file=safetensors.torch.save_file,
    load_file=safetensors.torch.load_file,
    save=safetensors.torch.save,
    load=safetensors.torch.load,
    save_model=safetensors.torch.save_model,
    load_model=safetensors.torch.load_model,
    safe_open=safetensors.safe_open,
)
OURS = SimpleNamespace(
    name="statevault",
    save_file=dropin.save_file,
    load_file=dropin.load_file,
    save=dropin.save,
    load=dropin.load,
    save_model=dropin.save_model,
    load_model=dropin.load_model,
    safe_open=dropin.safe_open,
)
BOTH = [pytest.param(OURS, id="statevault"), pytest.param(REFERENCE, id="safetensors")]

DTYPES = [
    torch.float64,
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
    torch.uint16,
    torch.uint32,
    torch.uint64,
    torch.float8_e4m3fn,
    torch.float8_e5m2,
]


def _sample(dtype: torch.dtype, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    if dtype is torch.bool:
        return torch.randint(0, 2, shape, generator=generator).bool()
    count = int(torch.Size(shape).numel()) * dtype.itemsize
    raw = torch.randint(0, 256, (count,), dtype=torch.uint8, generator=generator)
    return raw.view(dtype).reshape(shape)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and a.view(torch.uint8).tolist() == b.view(torch.uint8).tolist()
        if a.numel() and a.dim()
        else a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    )


def _shown(metadata: dict[str, str] | None) -> dict[str, str] | None:
    """Metadata without statevault's own keys, which only the reference reader shows."""
    if metadata is None:
        return None
    return {key: value for key, value in metadata.items() if not key.startswith("statevault")}


def _state() -> dict[str, torch.Tensor]:
    state = {f"w.{str(dt)[6:]}": _sample(dt, (3, 5), seed=i) for i, dt in enumerate(DTYPES)}
    state["empty"] = torch.zeros(0, 4)
    state["scalar"] = torch.tensor(2.5)
    return state


@pytest.mark.parametrize("writer", BOTH)
@pytest.mark.parametrize("reader", BOTH)
def test_every_dtype_round_trips_between_both_modules(
    tmp_path: Path, writer: SimpleNamespace, reader: SimpleNamespace
) -> None:
    state = _state()
    path = tmp_path / "t.safetensors"
    writer.save_file(state, path)
    loaded = reader.load_file(path)
    assert sorted(loaded) == sorted(state)
    for name, tensor in state.items():
        assert _same(loaded[name], tensor), name


@pytest.mark.parametrize("writer", BOTH)
@pytest.mark.parametrize("reader", BOTH)
def test_bytes_round_trip_between_both_modules(
    writer: SimpleNamespace, reader: SimpleNamespace
) -> None:
    state = _state()
    data = writer.save(state, metadata={"k": "v"})
    assert isinstance(data, bytes)
    loaded = reader.load(data)
    assert sorted(loaded) == sorted(state)
    assert all(_same(loaded[name], tensor) for name, tensor in state.items())


@pytest.mark.parametrize("writer", BOTH)
@pytest.mark.parametrize("reader", BOTH)
def test_metadata_is_str_to_str(
    tmp_path: Path, writer: SimpleNamespace, reader: SimpleNamespace
) -> None:
    tensors = {"a": torch.ones(2)}
    writer.save_file(tensors, tmp_path / "m.safetensors", metadata={"format": "pt", "run": "7"})
    writer.save_file(tensors, tmp_path / "n.safetensors")
    with reader.safe_open(tmp_path / "m.safetensors", framework="pt") as opened:
        assert _shown(opened.metadata()) == {"format": "pt", "run": "7"}
    with reader.safe_open(tmp_path / "n.safetensors", framework="pt") as opened:
        # statevault marks every file it writes "format": "pt" (transformers checks it)
        assert _shown(opened.metadata()) == (None if writer is REFERENCE else {"format": "pt"})
    for bad in ({"n": 1}, {1: "n"}):
        with pytest.raises(TypeError):
            writer.save_file(tensors, tmp_path / "bad.safetensors", metadata=bad)


@pytest.mark.parametrize("api", BOTH)
def test_keys_are_sorted_and_get_tensors_gives_them_all(
    tmp_path: Path, api: SimpleNamespace
) -> None:
    tensors = {"z": torch.zeros(2), "a": torch.ones(3), "m": torch.arange(4)}
    api.save_file(tensors, tmp_path / "k.safetensors")
    with api.safe_open(tmp_path / "k.safetensors", framework="pt", device="cpu") as opened:
        assert opened.keys() == ["a", "m", "z"]
        assert sorted(opened.offset_keys()) == ["a", "m", "z"]
        got = opened.get_tensors()
        assert torch.equal(opened.get_tensor("m"), tensors["m"])
    assert all(torch.equal(got[name], tensors[name]) for name in tensors)


@pytest.mark.parametrize("api", BOTH)
def test_shared_tensors_are_refused_by_save_file(tmp_path: Path, api: SimpleNamespace) -> None:
    weight = torch.zeros(4, 4)
    with pytest.raises(RuntimeError, match="share memory"):
        api.save_file({"a": weight, "b": weight}, tmp_path / "s.safetensors")
    with pytest.raises(RuntimeError, match="share memory"):  # overlapping views
        api.save_file({"a": weight[:3], "b": weight[2:]}, tmp_path / "s.safetensors")
    assert not (tmp_path / "s.safetensors").exists()
    # views of one storage that do not overlap are independent tensors
    api.save_file({"a": weight[:2], "b": weight[2:]}, tmp_path / "halves.safetensors")
    assert sorted(api.load_file(tmp_path / "halves.safetensors")) == ["a", "b"]


class _Tied(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(5, 3)
        self.head = torch.nn.Linear(3, 5, bias=False)
        self.head.weight = self.embed.weight


@pytest.mark.parametrize("writer", BOTH)
@pytest.mark.parametrize("reader", BOTH)
def test_save_model_stores_a_tie_once_and_load_model_restores_it(
    tmp_path: Path, writer: SimpleNamespace, reader: SimpleNamespace
) -> None:
    model = _Tied()
    given = {"note": "x"}
    writer.save_model(model, str(tmp_path / "tied.safetensors"), metadata=given)
    with reader.safe_open(tmp_path / "tied.safetensors", framework="pt") as opened:
        assert opened.keys() == ["embed.weight"]
        expected = {"note": "x", "head.weight": "embed.weight"}
        if writer is OURS:
            expected["format"] = "pt"
        assert _shown(opened.metadata()) == expected
    fresh = _Tied()
    missing, unexpected = reader.load_model(fresh, tmp_path / "tied.safetensors")
    assert (missing, unexpected) == (set(), [])
    assert torch.equal(fresh.head.weight, model.embed.weight)
    assert fresh.head.weight is fresh.embed.weight
    if writer is OURS:
        assert given == {"note": "x"}  # the caller's dict is not changed (safetensors adds to it)


@pytest.mark.parametrize("api", BOTH)
def test_load_model_reports_like_safetensors(tmp_path: Path, api: SimpleNamespace) -> None:
    api.save_file({"weight": torch.ones(4, 4), "extra": torch.ones(1)}, tmp_path / "p.safetensors")
    with pytest.raises(RuntimeError, match="bias"):
        api.load_model(torch.nn.Linear(4, 4), tmp_path / "p.safetensors")
    model = torch.nn.Linear(4, 4)
    result = api.load_model(model, tmp_path / "p.safetensors", strict=False)
    assert result == ({"bias"}, ["extra"])
    assert torch.equal(model.weight, torch.ones(4, 4))
    with pytest.raises(RuntimeError, match="weight"):  # a shape mismatch even when not strict
        api.load_model(torch.nn.Linear(4, 5), tmp_path / "p.safetensors", strict=False)


@pytest.mark.parametrize("api", BOTH)
@pytest.mark.parametrize(
    ("tensors", "error"),
    [
        ({"a": torch.zeros(3, 4).t()}, ValueError),  # non-contiguous
        ({"a": torch.eye(3).to_sparse()}, ValueError),
        ({"a": 1.0}, ValueError),
        ([torch.zeros(1)], ValueError),
        ({1: torch.zeros(1)}, TypeError),
    ],
    ids=["non-contiguous", "sparse", "not-a-tensor", "not-a-dict", "int-key"],
)
def test_save_file_refuses_what_safetensors_refuses(
    tmp_path: Path, api: SimpleNamespace, tensors: Any, error: type[Exception]
) -> None:
    with pytest.raises(error):
        api.save_file(tensors, tmp_path / "r.safetensors")
    assert not (tmp_path / "r.safetensors").exists()


@pytest.mark.parametrize("api", BOTH)
def test_save_model_with_force_contiguous_false_refuses_non_contiguous(
    tmp_path: Path, api: SimpleNamespace
) -> None:
    model = torch.nn.Linear(3, 4)
    model.weight = torch.nn.Parameter(torch.zeros(3, 4).t())
    with pytest.raises(ValueError, match="force_contiguous"):
        api.save_model(model, str(tmp_path / "c.safetensors"), force_contiguous=False)
    api.save_model(model, str(tmp_path / "c.safetensors"))
    assert api.load_file(tmp_path / "c.safetensors")["weight"].shape == (4, 3)


INDICES: list[Any] = [
    slice(None),
    slice(1, 3),
    (slice(None), slice(2, 5)),
    (1, slice(1, 4)),
    (slice(0, 6, 2), slice(None, None, 3)),
    (Ellipsis, 2),
    (-1,),
    (slice(-3, None), slice(-2, None)),
    (slice(4, 2),),  # empty
    (slice(10, 20),),  # past the end: empty
    (None, slice(1, 2)),
    (2, 3, 1),
]


@pytest.mark.parametrize("api", BOTH)
@pytest.mark.parametrize("index", INDICES, ids=repr)
def test_slices_match_indexing_the_tensor(tmp_path: Path, api: SimpleNamespace, index: Any) -> None:
    tensor = torch.arange(6 * 7 * 4, dtype=torch.float32).reshape(6, 7, 4)
    safetensors.torch.save_file({"t": tensor}, tmp_path / "ref.safetensors")
    statevault.save({"t": tensor}, tmp_path / "ours.safetensors")
    for path in (tmp_path / "ref.safetensors", tmp_path / "ours.safetensors"):
        with api.safe_open(path, framework="pt") as opened:
            part = opened.get_slice("t")
            assert part.get_shape() == [6, 7, 4]
            assert part.get_dtype() == "F32"
            got = part[index]
        expected = tensor[index]
        assert got.shape == expected.shape
        assert torch.equal(got, expected)


@pytest.mark.parametrize("api", BOTH)
def test_slices_of_bf16_and_empty_tensors(tmp_path: Path, api: SimpleNamespace) -> None:
    tensors = {"b": torch.randn(5, 3).to(torch.bfloat16), "e": torch.zeros(0, 3)}
    api.save_file(tensors, tmp_path / "s.safetensors")
    with api.safe_open(tmp_path / "s.safetensors", framework="pt") as opened:
        assert opened.get_slice("b").get_dtype() == "BF16"
        assert torch.equal(opened.get_slice("b")[1:3], tensors["b"][1:3])
        assert opened.get_slice("e")[:].shape == (0, 3)
        assert opened.get_tensor("e").shape == (0, 3)


@pytest.mark.parametrize("api", BOTH)
@pytest.mark.parametrize(
    ("index", "error"),
    [
        (10, IndexError),
        (-8, IndexError),
        ((0, 0, 0, 0), IndexError),
        (slice(None, None, -1), ValueError),
    ],
    ids=["past-end", "before-start", "too-many", "negative-step"],
)
def test_bad_slices_raise_what_safetensors_raises(
    tmp_path: Path, api: SimpleNamespace, index: Any, error: type[Exception]
) -> None:
    safetensors.torch.save_file({"t": torch.zeros(6, 7, 4)}, tmp_path / "t.safetensors")
    with api.safe_open(tmp_path / "t.safetensors", framework="pt") as opened:
        part = opened.get_slice("t")
        with pytest.raises(error):
            part[index]


@pytest.mark.parametrize("api", BOTH)
def test_reading_errors_are_caught_as_safetensors_errors(
    tmp_path: Path, api: SimpleNamespace
) -> None:
    path = tmp_path / "t.safetensors"
    api.save_file({"a": torch.ones(2)}, path)
    with pytest.raises(FileNotFoundError):
        api.load_file(tmp_path / "absent.safetensors")
    (tmp_path / "garbage.safetensors").write_bytes(b"garbage garbage garbage")
    with pytest.raises(safetensors.SafetensorError):
        api.load_file(tmp_path / "garbage.safetensors")
    with pytest.raises(safetensors.SafetensorError):
        api.load(b"123")
    with pytest.raises(safetensors.SafetensorError):
        api.safe_open(path, framework="numpyx")
    with pytest.raises(safetensors.SafetensorError):
        api.safe_open(path, framework="pt", backend="mmapx")
    with pytest.raises(safetensors.SafetensorError):
        api.safe_open(path, framework="pt", device="bogus")
    opened = api.safe_open(path, framework="pt", backend="pread")  # usable without `with`
    with pytest.raises(safetensors.SafetensorError):
        opened.get_tensor("missing")
    with pytest.raises(safetensors.SafetensorError):
        opened.get_slice("missing")
    assert torch.equal(opened.get_tensor("a"), torch.ones(2))
    opened.__exit__(None, None, None)
    for call in (opened.keys, opened.metadata, lambda: opened.get_tensor("a")):
        with pytest.raises(safetensors.SafetensorError):
            call()


@pytest.mark.parametrize("api", BOTH)
def test_a_save_into_a_missing_directory_is_a_safetensors_error(
    tmp_path: Path, api: SimpleNamespace
) -> None:
    with pytest.raises(safetensors.SafetensorError):
        api.save_file({"a": torch.ones(2)}, tmp_path / "absent" / "a.safetensors")


def test_signatures_match_the_reference() -> None:
    for name in ("save_file", "load_file", "save", "load", "save_model", "load_model"):
        ours = inspect.signature(getattr(OURS, name)).parameters
        theirs = inspect.signature(getattr(REFERENCE, name)).parameters
        assert [(p.name, p.kind, p.default) for p in ours.values()] == [
            (p.name, p.kind, p.default) for p in theirs.values()
        ], name
    ours_open = inspect.signature(dropin.safe_open).parameters
    theirs_open = inspect.signature(safetensors.safe_open).parameters
    assert [(p.name, p.kind) for p in ours_open.values()] == [
        (p.name, p.kind) for p in theirs_open.values()
    ]
    assert {p.name: p.default for p in ours_open.values()} == {
        "filename": inspect.Parameter.empty,
        "framework": inspect.Parameter.empty,
        "device": "cpu",
        "backend": "mmap",
    }


# -- what the drop-in adds ------------------------------------------------------------------
def test_damaged_bytes_are_caught_where_safetensors_returns_them(tmp_path: Path) -> None:
    path = tmp_path / "d.safetensors"
    dropin.save_file({"a": torch.arange(256, dtype=torch.float32)}, path)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    assert not torch.equal(
        safetensors.torch.load_file(path)["a"], torch.arange(256, dtype=torch.float32)
    )
    with pytest.raises(statevault.ChecksumMismatchError, match="'a'") as caught:
        dropin.load_file(path)
    assert isinstance(caught.value, safetensors.SafetensorError)


def test_save_file_is_atomic_and_records_checksums(tmp_path: Path) -> None:
    path = tmp_path / "a.safetensors"
    dropin.save_file({"a": torch.ones(3)}, path)
    with pytest.raises(RuntimeError):
        weight = torch.zeros(2)
        dropin.save_file({"a": weight, "b": weight}, path)
    assert torch.equal(dropin.load_file(path)["a"], torch.ones(3))  # the old file is whole
    assert statevault.verify(path).ok
    with statevault.Checkpoint(path) as ckpt:
        assert ckpt.has_checksums


def test_tied_names_of_a_statevault_checkpoint_load_as_one_tensor(tmp_path: Path) -> None:
    statevault.save(_Tied(), tmp_path / "tied.safetensors")
    with dropin.safe_open(tmp_path / "tied.safetensors", framework="pt") as opened:
        assert opened.keys() == ["embed.weight", "head.weight"]
        tensors = opened.get_tensors()
    assert tensors["head.weight"] is tensors["embed.weight"]


def test_a_sharded_checkpoint_opens_too(tmp_path: Path) -> None:
    state = {f"layer{i}": torch.full((256,), float(i)) for i in range(4)}
    statevault.save(state, tmp_path / "model.safetensors", max_shard_size=2048)
    loaded = dropin.load_file(tmp_path / "model.safetensors.index.json")
    assert sorted(loaded) == sorted(state)
    assert all(torch.equal(loaded[name], state[name]) for name in state)
