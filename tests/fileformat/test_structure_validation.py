"""One validation of a file's structure, shared by every reader: ``verify(path).ok`` is False
exactly when ``load(path)`` raises, and every reader refuses a bad file with a statevault
error naming the file and the bad node, never a raw TypeError/KeyError/RecursionError."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import statevault
from helpers.hostile import format2_bytes
from statevault.errors import HeaderError, StateVaultError


def nest(depth: int, leaf: str = "1") -> str:
    return '{"list":[' * depth + leaf + "]}" * depth


# (id, tree JSON text, aliases, node path named in the error; "" when the tree is not even
# JSON, so no node can be named; None when the file is fine)
TREES: list[tuple[str, str, dict[str, str], str | None]] = [
    ("tensor", '{"tensor":"a"}', {}, None),
    (
        "nested-ok",
        '{"dict":[["x",{"tensor":"a"}],[0,1.5],["t",{"tuple":[null,true,"s",{"float":"-inf"}]}]]}',
        {},
        None,
    ),
    ("alias-ref", '{"dict":[["w",{"tensor":"a"}],["v",{"tensor":"b"}]]}', {"b": "a"}, None),
    ("versions", '{"dict":[["c",{"tensor":"c"}]],"torch_metadata":{"":{"version":1}}}', {}, None),
    ("depth-100", nest(100), {}, None),
    ("literal-root", "3", {}, None),
    ("missing-tensor", '{"dict":[["opt",{"list":[1,{"tensor":"nope"}]}]]}', {}, "opt.1"),
    ("tensor-not-str", '{"dict":[["w",{"tensor":5}]]}', {}, "w"),
    ("empty-node", '{"dict":[["w",{}]]}', {}, "w"),
    ("list-root", "[1,2]", {}, "<root>"),
    ("list-body-int", '{"list":5}', {}, "<root>"),
    ("short-pair", '{"dict":[["a"]]}', {}, "<root>"),
    ("float-key", '{"dict":[[1.5,2]]}', {}, "<root>"),
    ("bool-key", '{"dict":[[true,2]]}', {}, "<root>"),
    ("null-key", '{"dict":[[null,2]]}', {}, "<root>"),
    ("repeated-key", '{"dict":[["a",1],["a",2]]}', {}, "<root>"),
    ("float-name", '{"list":[{"float":"NaN"}]}', {}, "0"),
    ("float-list", '{"list":[{"float":["nan"]}]}', {}, "0"),
    ("extra-member", '{"tensor":"a","junk":1}', {}, "<root>"),
    ("bad-versions", '{"dict":[],"torch_metadata":5}', {}, "<root>"),
    ("bad-version-entry", '{"dict":[],"torch_metadata":{"":{"v":[1]}}}', {}, "<root>"),
    ("unknown-kind", '{"dict":[["s",{"set":[1]}]]}', {}, "s"),
    ("depth-101", nest(101), {}, ".".join(["0"] * 100)),
    ("json-too-deep", "[" * 50_000 + "]" * 50_000, {}, ""),
    ("not-json", "{nope", {}, ""),
]


def write(tmp_path: Path, tree: str, aliases: dict[str, str]) -> Path:
    path = tmp_path / "crafted.safetensors"
    path.write_bytes(format2_bytes(tree, aliases=aliases))
    return path


@pytest.mark.parametrize(("tree", "aliases", "node"), [case[1:] for case in TREES],
                         ids=[case[0] for case in TREES])  # fmt: skip
def test_verify_ok_exactly_when_load_succeeds(
    tmp_path: Path, tree: str, aliases: dict[str, str], node: str | None
) -> None:
    path = write(tmp_path, tree, aliases)
    report = statevault.verify(path)
    try:
        statevault.load(path)
    except StateVaultError as exc:
        loaded: StateVaultError | None = exc
    else:
        loaded = None
    assert report.ok is (loaded is None), (report, loaded)
    assert (loaded is None) is (node is None), loaded
    if loaded is None:
        statevault.inspect(path)
        statevault.diff(path, path)
        statevault.convert(path, tmp_path / "copy.safetensors")
        return
    assert isinstance(loaded, HeaderError)
    assert report.header_error is not None
    for message in (str(loaded), report.header_error):
        assert str(path) in message
        if node:
            assert f"at node {node}:" in message
    # every other reader refuses with the same statevault error, not a raw TypeError
    for call in (
        lambda: statevault.inspect(path),
        lambda: statevault.diff(path, path),
        lambda: statevault.convert(path, tmp_path / "copy.safetensors"),
        lambda: statevault.Checkpoint(path).tree,
    ):
        with pytest.raises(HeaderError) as caught:
            call()
        assert str(caught.value) == str(loaded)


@pytest.mark.parametrize(
    ("aliases", "dtypes"),
    [({"b": "missing"}, {}), ({"a": "c"}, {}), ({}, {"a": "complex128"}), ({}, {"zz": "float32"})],
    ids=["alias-dangles", "alias-shadows", "dtype-misfits", "dtype-unknown-tensor"],
)
def test_alias_and_dtype_records_refused_alike(
    tmp_path: Path, aliases: dict[str, str], dtypes: dict[str, str]
) -> None:
    path = tmp_path / "crafted.safetensors"
    path.write_bytes(format2_bytes('{"tensor":"a"}', aliases=aliases, dtypes=dtypes))
    assert not statevault.verify(path).ok
    with pytest.raises(HeaderError):
        statevault.load(path)
    with pytest.raises(HeaderError):
        statevault.inspect(path)


def test_checkpoint_tree_checks_every_node(tmp_path: Path) -> None:
    # Checkpoint.tree (what inspect, verify, diff and convert read at open) checks every node
    path = write(tmp_path, '{"dict":[["w",{"tensor":"nope"}]]}', {})
    with statevault.Checkpoint(path) as checkpoint, pytest.raises(HeaderError, match="at node w"):
        checkpoint.tree  # noqa: B018


def test_save_refuses_what_load_would_refuse(tmp_path: Path) -> None:
    deep: list[object] = []
    node = deep
    for _ in range(100):
        node.append([])
        node = node[0]  # type: ignore[assignment]
    with pytest.raises(statevault.UnsupportedObjectError, match="nested too deeply"):
        statevault.save(deep, tmp_path / "deep.safetensors")
    statevault.save(deep[0], tmp_path / "ok.safetensors")  # 100 levels: the most allowed
    assert statevault.load(tmp_path / "ok.safetensors") == deep[0]


# -- sharded indexes ----------------------------------------------------------------------


def sharded(tmp_path: Path, index: str) -> Path:
    directory = tmp_path / "sharded"
    directory.mkdir()
    statevault.save({"w": torch.ones(2)}, directory / "model-1.safetensors")
    (directory / "model.safetensors.index.json").write_text(index, encoding="utf-8")
    return directory


GOOD_MAP = '"weight_map":{"w":"model-1.safetensors"}'


@pytest.mark.parametrize(
    ("index", "message"),
    [
        ('{"a":' * 100_000 + "1" + "}" * 100_000, "nested too deeply"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        (f'{{"metadata":{"[" * 900 + "]" * 900},{GOOD_MAP}}}', "nested too deeply|metadata"),
        ('{"weight_map":[1]}', "no 'weight_map'"),
        ('{"weight_map":{"w":5}}', "not a plain file name"),
        ('{"weight_map":{"w":"../model-1.safetensors"}}', "not a plain file name"),
        (f'{{"metadata":[1],{GOOD_MAP}}}', "'metadata' must be an object"),
        ('{"weight_map":{"w":"model-1.safetensors","x":"model-1.safetensors"}}', "disagree"),
        ('{"weight_map":{"w":"model-1.safetensors"},"total":NaN}', "not valid JSON"),
        ("\ufeff{}", "not valid JSON"),
    ],
    ids=["deep-object", "deep-array", "deep-metadata", "map-list", "shard-int", "shard-parent",
         "metadata-list", "map-extra", "nan", "bom"],
)  # fmt: skip
def test_hostile_index_is_refused(tmp_path: Path, index: str, message: str) -> None:
    directory = sharded(tmp_path, index)
    with pytest.raises(HeaderError, match=message) as caught:
        statevault.inspect(directory)
    assert "model.safetensors.index.json" in str(caught.value)
    report = statevault.verify(directory)
    assert not report.ok and report.header_error == str(caught.value)


def test_index_names_sort_without_int_conversion(tmp_path: Path) -> None:
    # Unicode digits and digit runs past int()'s 4300-digit limit used to crash the sort
    names = ["layers.10.w", "layers.2.w", "layers.\u00b2.w", "x." + "9" * 5000]
    directory = tmp_path / "sharded"
    directory.mkdir()
    statevault.save({n: torch.ones(1) for n in names}, directory / "model-1.safetensors")
    index = {"weight_map": dict.fromkeys(names, "model-1.safetensors")}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    summary = statevault.inspect(directory)
    assert [t.name for t in summary.tensors][:2] == ["layers.2.w", "layers.10.w"]
    assert statevault.verify(directory).ok
