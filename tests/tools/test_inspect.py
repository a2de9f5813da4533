"""inspect(): header-only summaries of every accepted input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import statevault
from helpers.samples import (
    legacy_state,
    numel_of_distinct,
    tensor_count,
    training_state,
    write_sharded,
)
from statevault.fileformat.tree import flatten
from statevault.readers.base import TensorInfo
from statevault.tools.inspection import module_tree, plain_state, state_leaves


def test_statevault_file_summary_matches_the_saved_state(tmp_path: Path) -> None:
    state = training_state()
    path = tmp_path / "ckpt.safetensors"
    statevault.save(state, path, metadata={"run": "baseline"})

    summary = statevault.inspect(path)

    assert summary.kind == "statevault" and summary.format_version == 3
    assert summary.has_checksums
    assert summary.aliases == {"model.head.weight": "model.embed.weight"}
    assert len(summary.tensors) + len(summary.aliases) == tensor_count(state)
    assert summary.numel == numel_of_distinct(state)
    assert summary.metadata["run"] == "baseline"
    assert summary.state["epoch"] == 3 and summary.state["best"] == "nan"
    assert summary.state["optim"]["param_groups"][0]["lr"] == 1e-3
    assert "model" not in summary.state  # all tensors: nothing non-tensor to show
    top = {child.name: child for child in summary.root.children}
    assert sum(c.numel for c in top.values()) == summary.numel
    assert top["model"].numel == numel_of_distinct(state["model"])  # the tied head counts once
    assert top["model"].numel < sum(t.numel() for t in state["model"].values())


def test_to_dict_is_json_and_complete(tmp_path: Path) -> None:
    state = training_state()
    path = tmp_path / "ckpt.safetensors"
    statevault.save(state, path)
    data = json.loads(json.dumps(statevault.inspect(path).to_dict(), allow_nan=False))
    names = {t["name"] for t in data["tensors"]}
    assert names | set(data["aliases"]) == set(flatten(state)[1])
    assert data["modules"]["model"]["tensors"] == len(state["model"]) - 1  # one tied alias
    by_name = {t["name"]: t for t in data["tensors"]}
    assert by_name["dtypes.complex128"]["dtype"] == "complex128"
    assert by_name["dtypes.complex128"]["stored_as"] == "F64"
    assert by_name["dtypes.complex128"]["shape"] == [3, 4]


def test_inspect_reads_only_the_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.safetensors"
    statevault.save({"w": torch.zeros(8 << 20, dtype=torch.float32)}, path)  # 32 MiB of data
    read = []
    real_pread, real_preadv, real_read = os.pread, os.preadv, os.read

    def pread(fd: int, n: int, offset: int) -> bytes:
        data = real_pread(fd, n, offset)
        read.append(len(data))
        return data

    def preadv(fd: int, buffers: list[memoryview], offset: int) -> int:
        got = real_preadv(fd, buffers, offset)
        read.append(got)
        return got

    def plain_read(fd: int, n: int) -> bytes:
        data = real_read(fd, n)
        read.append(len(data))
        return data

    monkeypatch.setattr(os, "pread", pread)
    monkeypatch.setattr(os, "preadv", preadv)
    monkeypatch.setattr(os, "read", plain_read)
    summary = statevault.inspect(path)
    assert summary.nbytes == 32 << 20
    assert 0 < sum(read) < 4096, read  # the header only, not a byte of the 32 MiB


def test_plain_safetensors_file(tmp_path: Path) -> None:
    path = tmp_path / "plain.safetensors"
    save_file({"a.w": torch.ones(2, 3), "b": torch.zeros(4, dtype=torch.int8)}, str(path))
    summary = statevault.inspect(path)
    assert summary.kind == "safetensors" and summary.format_version is None
    assert not summary.has_checksums and summary.state is None
    assert {t.name: t.shape for t in summary.tensors} == {"a.w": (2, 3), "b": (4,)}
    assert summary.numel == 10 and summary.nbytes == 28


@pytest.mark.parametrize("legacy", [True, False])
def test_torch_files_through_the_weights_only_loader(tmp_path: Path, legacy: bool) -> None:
    state = legacy_state()
    path = tmp_path / "ckpt.pt"
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    summary = statevault.inspect(path)
    assert summary.kind == ("torch-legacy" if legacy else "torch")
    assert summary.aliases == {"model.head.weight": "model.embed.weight"}
    assert summary.numel == numel_of_distinct(state)
    assert summary.state["epoch"] == 3


def test_refused_pickle_explains_and_is_not_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(1), "cfg": Path("x")}, path)  # a class outside the allowlist
    with pytest.raises(statevault.UnsupportedObjectError) as caught:
        statevault.inspect(path)
    message = str(caught.value)
    assert str(path) in message and "arbitrary code" in message and "PosixPath" in message


def test_sharded_directory(tmp_path: Path) -> None:
    tensors = {f"layers.{i}.w": torch.full((i + 1, 2), float(i)) for i in range(12)}
    directory = write_sharded(tmp_path / "hf", tensors, shards=3)
    summary = statevault.inspect(directory)
    assert summary.kind == "sharded"
    assert [t.name for t in summary.tensors] == list(tensors)  # layers.2 before layers.10
    assert summary.numel == sum(t.numel() for t in tensors.values())
    assert json.loads(summary.metadata["total_size"]) == summary.nbytes


def test_missing_path() -> None:
    with pytest.raises(statevault.CheckpointNotFoundError):
        statevault.inspect("/nonexistent/ckpt.safetensors")


# -- pure helpers ------------------------------------------------------------------------


def _meta(name: str, numel: int) -> TensorInfo:
    return TensorInfo(name, torch.float32, (numel,), numel * 4, "F32", None, "f")


def test_module_tree_sums_subtrees_and_skips_aliases() -> None:
    metas = {n: _meta(n, k) for n, k in [("a.x.w", 2), ("a.x.b", 3), ("a.y", 5), ("c", 7)]}
    root = module_tree(metas, {"tied": "c"})
    a = next(c for c in root.children if c.name == "a")
    assert (a.numel, a.count, a.nbytes) == (10, 3, 40)
    assert (root.numel, root.count) == (17, 4)
    tied = next(c for c in root.children if c.name == "tied")
    assert tied.alias_of == "c" and tied.numel == 0


def test_plain_state_and_leaves_drop_tensors_keep_values() -> None:
    obj = {"w": torch.ones(1), "opt": {"lr": 0.1, 0: {"t": torch.ones(1)}}, "l": [torch.ones(1), 2]}
    skeleton, _ = flatten(obj)
    assert plain_state(skeleton) == {"opt": {"lr": 0.1}, "l": ["<tensor l.0>", 2]}
    assert state_leaves(skeleton) == {"opt.lr": 0.1, "l.1": 2}
    assert plain_state(flatten({"only": torch.ones(1)})[0]) is None
