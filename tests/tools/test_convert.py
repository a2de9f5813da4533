"""convert(): every accepted source -> a statevault file that loads equal to it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import statevault
from helpers.samples import assert_same, legacy_state, training_state, write_sharded
from statevault.readers.sharded import check_shard_name
from statevault.tools.conversion import select


@pytest.mark.parametrize("legacy", [True, False])
def test_pt_converts_to_an_equal_statevault_file(tmp_path: Path, legacy: bool) -> None:
    state = legacy_state()
    src, dst = tmp_path / "ckpt.pt", tmp_path / "ckpt.safetensors"
    torch.save(state, src, _use_new_zipfile_serialization=not legacy)
    report = statevault.convert(src, dst)
    loaded = statevault.load(dst)
    assert_same(state, loaded)
    assert loaded["model"]["head.weight"] is loaded["model"]["embed.weight"]  # still tied
    assert report.source_kind == ("torch-legacy" if legacy else "torch")
    assert report.file_size == dst.stat().st_size
    assert statevault.verify(dst).ok and statevault.diff(src, dst).ok


def test_statevault_file_round_trips_with_every_dtype(tmp_path: Path) -> None:
    state = training_state()
    src, dst = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    statevault.save(state, src, metadata={"run": "x"})
    statevault.convert(src, dst)
    assert_same(state, statevault.load(dst))
    assert statevault.inspect(dst).metadata["run"] == "x"


def test_plain_safetensors_and_sharded_directory(tmp_path: Path) -> None:
    tensors = {f"layers.{i}.w": torch.randn(3, i + 1) for i in range(5)}
    plain = tmp_path / "plain.safetensors"
    save_file(tensors, str(plain))
    statevault.convert(plain, tmp_path / "p.sv")
    assert_same(tensors, statevault.load(tmp_path / "p.sv"))

    directory = write_sharded(tmp_path / "hf", tensors, shards=2)
    report = statevault.convert(directory, tmp_path / "s.sv")
    assert report.source_kind == "sharded" and report.tensors == 5
    assert_same(tensors, statevault.load(tmp_path / "s.sv"))
    assert "total_size" not in statevault.inspect(tmp_path / "s.sv").metadata


def test_cast_touches_only_floating_tensors_and_keeps_ties(tmp_path: Path) -> None:
    state = legacy_state()
    src, dst = tmp_path / "ckpt.pt", tmp_path / "bf16.sv"
    torch.save(state, src)
    report = statevault.convert(src, dst, dtype="bf16")
    loaded = statevault.load(dst)
    assert loaded["model"]["embed.weight"].dtype == torch.bfloat16
    assert loaded["model"]["head.weight"] is loaded["model"]["embed.weight"]
    assert loaded["dtypes"]["int64"].dtype == torch.int64
    assert loaded["dtypes"]["complex64"].dtype == torch.complex64
    assert torch.equal(loaded["model"]["block.0.bias"], state["model"]["block.0.bias"].bfloat16())
    floating = {
        (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        for t in statevault.fileformat.tree.flatten(state)[1].values()
        if t.is_floating_point() and t.dtype != torch.bfloat16
    }
    assert report.cast == len(floating)  # each distinct tensor once; tied ones share a cast
    with pytest.raises(statevault.InvalidArgumentError, match="floating-point"):
        statevault.convert(src, dst, dtype="int8")


def test_keys_and_strip_prefix_extract_model_weights(tmp_path: Path) -> None:
    state = legacy_state()
    src, dst = tmp_path / "ckpt.pt", tmp_path / "model.sv"
    torch.save(state, src)
    report = statevault.convert(src, dst, keys=r"^model\.", strip_prefix=["model."])
    loaded = statevault.load(dst)
    assert list(loaded) == list(state["model"])
    assert_same(dict(state["model"]), loaded)
    assert report.flattened and report.renamed == len(state["model"])
    assert "epoch" not in report.dropped and "optim.state.0.exp_avg" in report.dropped


def test_select_is_pure_and_refuses_collisions_and_empty_results() -> None:
    names = ["module.a", "module.b", "c"]
    assert select(names, keys=None, strip_prefix=["module."]) == (
        {"a": "module.a", "b": "module.b", "c": "c"},
        [],
    )
    assert select(names, keys=re.compile("b$"), strip_prefix=[]) == (
        {"module.b": "module.b"},
        ["module.a", "c"],
    )
    with pytest.raises(statevault.KeyMappingError, match="would both be named 'c'"):
        select(["x.c", "c"], keys=None, strip_prefix=["x."])
    with pytest.raises(statevault.KeyMappingError, match="leaves an empty name"):
        select(["x."], keys=None, strip_prefix=["x."])
    with pytest.raises(statevault.InvalidArgumentError, match="no tensor name matches"):
        select(names, keys=re.compile("nothing"), strip_prefix=[])


def test_strip_prefix_takes_one_prefix_as_a_str_not_its_characters(tmp_path: Path) -> None:
    src = tmp_path / "a.sv"
    statevault.save({"model.fc.bias": torch.ones(2), "model.fc.weight": torch.ones(2, 2)}, src)
    one = statevault.convert(src, tmp_path / "one.sv", strip_prefix="model.")
    several = statevault.convert(src, tmp_path / "several.sv", strip_prefix=("x.", "model."))
    assert list(statevault.load(tmp_path / "one.sv")) == ["fc.bias", "fc.weight"]
    assert list(statevault.load(tmp_path / "several.sv")) == ["fc.bias", "fc.weight"]
    assert one.renamed == several.renamed == 2


@pytest.mark.parametrize(
    ("options", "names"),
    [
        ({"strip_prefix": 1}, "strip_prefix"),
        ({"strip_prefix": ["model.", 1]}, "strip_prefix"),
        ({"keys": 1}, "keys"),
        ({"keys": "("}, "keys='\\('"),
        ({"dtype": "int8"}, "dtype='int8'"),
        ({"dtype": 16}, "dtype=16"),
    ],
)
def test_bad_arguments_are_invalid_argument_errors_before_anything_is_read(
    tmp_path: Path, options: dict[str, object], names: str
) -> None:
    src, dst = tmp_path / "a.sv", tmp_path / "out.sv"
    statevault.save({"model.w": torch.ones(1)}, src)
    with pytest.raises(statevault.InvalidArgumentError, match=names):
        statevault.convert(src, dst, **options)  # type: ignore[arg-type]
    assert not dst.exists()


def test_a_path_argument_of_the_wrong_type_is_an_invalid_argument_error(tmp_path: Path) -> None:
    src = tmp_path / "a.sv"
    statevault.save({"w": torch.ones(1)}, src)
    with pytest.raises(statevault.InvalidArgumentError, match="destination must be a path"):
        statevault.convert(src, 123)  # type: ignore[arg-type]
    with pytest.raises(statevault.InvalidArgumentError, match="source must be a path"):
        statevault.convert(None, tmp_path / "b.sv")  # type: ignore[arg-type]


def test_refused_pickle_is_never_unpickled_and_nothing_is_written(tmp_path: Path) -> None:
    src, dst = tmp_path / "evil.pt", tmp_path / "out.sv"
    torch.save({"w": torch.ones(1), "where": Path("/")}, src)
    with pytest.raises(statevault.UnsupportedObjectError, match="arbitrary code"):
        statevault.convert(src, dst)
    assert not dst.exists()


@pytest.mark.parametrize(
    "shard", ["../outside.safetensors", "/etc/passwd", "sub/x.safetensors", "..", "a\\..\\b", ""]
)
def test_shard_names_cannot_escape_the_directory(tmp_path: Path, shard: str) -> None:
    directory = write_sharded(tmp_path / "hf", {"w": torch.ones(2)}, shards=1)
    index = directory / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"w": shard}}))
    with pytest.raises(statevault.HeaderError, match="not a plain file name"):
        statevault.convert(directory, tmp_path / "out.sv")
    with pytest.raises(statevault.HeaderError):
        check_shard_name(shard, index=index)


def test_index_and_shards_must_agree(tmp_path: Path) -> None:
    directory = write_sharded(tmp_path / "hf", {"w": torch.ones(2), "v": torch.ones(1)})
    index = directory / "model.safetensors.index.json"
    document = json.loads(index.read_text())
    document["weight_map"]["ghost"] = document["weight_map"]["w"]
    index.write_text(json.dumps(document))
    with pytest.raises(statevault.HeaderError, match="'ghost' is mapped to"):
        statevault.inspect(directory)


def test_destination_must_not_be_the_source(tmp_path: Path) -> None:
    src = tmp_path / "a.sv"
    statevault.save({"w": torch.ones(1)}, src)
    with pytest.raises(statevault.InvalidArgumentError, match="destination"):
        statevault.convert(src, src)
