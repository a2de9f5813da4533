"""Odd but valid checkpoints: every tool gives a result, never a raw exception."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

import statevault
from helpers.samples import write_sharded
from statevault.cli import main


def _sv(obj: object) -> Callable[[Path], Path]:
    def build(path: Path) -> Path:
        statevault.save(obj, path.with_suffix(".safetensors"))
        return path.with_suffix(".safetensors")

    return build


def _pt(obj: object, *, legacy: bool = False) -> Callable[[Path], Path]:
    def build(path: Path) -> Path:
        torch.save(obj, path.with_suffix(".pt"), _use_new_zipfile_serialization=not legacy)
        return path.with_suffix(".pt")

    return build


def _plain(
    tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None
) -> Callable[[Path], Path]:
    def build(path: Path) -> Path:
        save_file(tensors, str(path.with_suffix(".safetensors")), metadata=metadata)
        return path.with_suffix(".safetensors")

    return build


def _sharded(path: Path) -> Path:
    return write_sharded(path, {"only": torch.ones(2)}, shards=1)


base = torch.arange(12.0).reshape(3, 4)
ODD: dict[str, Callable[[Path], Path]] = {
    "empty state": _sv({}),
    "no tensors at all": _sv({"epoch": 3, "lr": 0.1, "name": "run", "none": None}),
    "scalar and empty tensors": _sv({"s": torch.tensor(2.5), "e": torch.zeros(0, 3)}),
    "tensor and prefix": _sv({"a": torch.ones(1), "a.b": torch.ones(2), "": torch.ones(3)}),
    "unicode and dots": _sv({"层.0..w": torch.ones(1), ".x.": torch.ones(1)}),
    "many dtypes": _sv(
        {
            "b": torch.tensor([True, False]),
            "c": torch.tensor([1 + 2j]),
            "i": torch.tensor([2**62, -(2**62)]),
            "u": torch.tensor([255], dtype=torch.uint8),
        }
    ),
    "nested lists and tuples": _sv([{"w": torch.ones(2)}, (torch.zeros(1), [3, "x"])]),
    "plain safetensors, no metadata": _plain({"w": torch.ones(2)}, None),
    "plain safetensors, nothing in it": _plain({}, {"k": "v"}),
    "pt: a bare tensor": _pt(torch.ones(3)),
    "pt: a list at the top": _pt([torch.ones(2), 3]),
    "pt: empty dict": _pt({}),
    "pt: views sharing storage": _pt({"t": base.t(), "row": base[1], "all": base}),
    "pt legacy: views sharing storage": _pt({"row": base[1], "all": base}, legacy=True),
    "sharded, one shard": _sharded,
}


@pytest.mark.parametrize("kind", list(ODD))
def test_every_tool_answers_an_odd_but_valid_file(tmp_path: Path, kind: str) -> None:
    path = ODD[kind](tmp_path / "odd")
    runner = CliRunner()
    for args in (
        ["inspect", path],
        ["inspect", path, "--json"],
        ["verify", path],
        ["verify", path, "--json"],
        ["diff", path, path],
        ["convert", path, tmp_path / "out.sv"],
        ["diff", path, tmp_path / "out.sv"],
    ):
        result = runner.invoke(main, [str(a) for a in args])
        assert result.exit_code == 0, (args, result.output)
        assert "internal error" not in result.output
        if "--json" in args:
            json.loads(result.stdout)


def test_a_sparse_tensor_in_a_pt_file_is_compared_and_refused_cleanly(tmp_path: Path) -> None:
    pt, other = tmp_path / "sparse.pt", tmp_path / "dense.sv"
    torch.save({"s": torch.eye(3).to_sparse()}, pt)
    statevault.save({"s": torch.eye(3) * 2}, other)
    runner = CliRunner()
    assert runner.invoke(main, ["diff", str(pt), str(pt)]).exit_code == 0
    differs = runner.invoke(main, ["diff", str(pt), str(other)])
    assert differs.exit_code == 1 and "s: 3 of 9 element(s) differ" in differs.stdout
    refused = runner.invoke(main, ["convert", str(pt), str(tmp_path / "out.sv")])
    assert refused.exit_code == 2 and "sparse" in refused.stderr
    assert "internal error" not in refused.stderr
