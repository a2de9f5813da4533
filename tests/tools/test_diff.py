"""diff(): keys, shapes, dtypes, values (chunked) and non-tensor state of two checkpoints."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import statevault
from helpers.samples import all_dtypes, legacy_state, random_tensor, training_state
from statevault.tools import diff_streams


def _save(path: Path, obj: object) -> Path:
    statevault.save(obj, path)
    return path


def test_file_equals_itself_with_every_dtype_and_nan(tmp_path: Path) -> None:
    state = training_state()
    a = _save(tmp_path / "a.safetensors", state)
    b = _save(tmp_path / "b.safetensors", state)
    report = statevault.diff(a, b)
    assert report.ok, str(report)
    assert len(report.tensors) == len(statevault.inspect(a).tensors)  # tied pair compared once


def test_statevault_file_equals_its_legacy_pt_source(tmp_path: Path) -> None:
    state = legacy_state()
    pt = tmp_path / "ckpt.pt"
    torch.save(state, pt, _use_new_zipfile_serialization=False)
    report = statevault.diff(pt, _save(tmp_path / "ckpt.safetensors", state))
    assert report.ok, str(report)


def test_every_kind_of_difference_is_reported(tmp_path: Path) -> None:
    base = {"same": torch.ones(4), "gone": torch.ones(1), "grow": torch.ones(2)}
    base |= {"cast": torch.ones(3), "vals": torch.arange(6.0), "epoch": 1}
    other = dict(base, grow=torch.ones(3), cast=torch.ones(3, dtype=torch.float64), epoch=2)
    other["vals"] = torch.arange(6.0) + torch.tensor([0, 0, 0.5, 0, -2, 0])
    other["new"] = torch.zeros(1)
    del other["gone"]
    report = statevault.diff(_save(tmp_path / "a", base), _save(tmp_path / "b", other))
    assert not report.ok
    assert report.only_a == ("gone",) and report.only_b == ("new",)
    assert report.shape_changes == (("grow", (2,), (3,)),)
    assert report.dtype_changes == (("cast", "float32", "float64"),)
    assert report.state_changes == (("epoch", 1, 2),)
    (vals,) = report.different
    a, b = base["vals"], other["vals"]
    assert vals.name == "vals" and vals.mismatched == 2
    assert vals.max_abs == pytest.approx(float((a - b).abs().max()))
    assert vals.rel_l2 == pytest.approx(float(torch.linalg.norm(a - b) / torch.linalg.norm(b)))
    cast = next(t for t in report.tensors if t.name == "cast")
    assert cast.ok  # same values, only the dtype changed
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["ok"] is False and data["only_a"] == ["gone"]


def test_tolerances_decide_equality(tmp_path: Path) -> None:
    a = _save(tmp_path / "a", {"w": torch.tensor([1.0, 100.0])})
    b = _save(tmp_path / "b", {"w": torch.tensor([1.001, 100.05])})
    assert not statevault.diff(a, b).ok
    assert not statevault.diff(a, b, atol=1e-3).ok  # 0.05 off at 100
    assert statevault.diff(a, b, atol=1e-3, rtol=1e-3).ok
    for bad in (-1, float("nan"), float("inf"), "0.1", True):
        with pytest.raises(statevault.InvalidArgumentError, match="atol must be a finite number"):
            statevault.diff(a, b, atol=bad)  # type: ignore[arg-type]
    with pytest.raises(statevault.InvalidArgumentError, match="rtol must be a finite number"):
        statevault.diff(a, b, rtol=-1e-9)
    with pytest.raises(statevault.InvalidArgumentError, match="b must be a path"):
        statevault.diff(a, 7)  # type: ignore[arg-type]


def test_nan_in_the_same_place_is_equal_elsewhere_not(tmp_path: Path) -> None:
    nan = float("nan")
    a = _save(tmp_path / "a", {"w": torch.tensor([nan, 1.0])})
    b = _save(tmp_path / "b", {"w": torch.tensor([nan, 1.0])})
    c = _save(tmp_path / "c", {"w": torch.tensor([1.0, nan])})
    assert statevault.diff(a, b).ok
    delta = statevault.diff(a, c).tensors[0]
    assert delta.mismatched == 2 and math.isinf(delta.max_abs or 0.0)
    assert json.dumps(statevault.diff(a, c).to_dict(), allow_nan=False)  # still valid JSON


def test_chunked_result_equals_one_shot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x = random_tensor(torch.float32, (1000,), seed=1).nan_to_num(0, 0, 0).clamp(-1e3, 1e3)
    y = x + torch.linspace(-1, 1, 1000)
    a, b = _save(tmp_path / "a", {"w": x}), _save(tmp_path / "b", {"w": y})
    whole = statevault.diff(a, b, atol=0.5).tensors[0]
    monkeypatch.setattr(diff_streams, "CHUNK_ELEMENTS", 7)  # 143 uneven chunks
    chunked = statevault.diff(a, b, atol=0.5).tensors[0]
    assert chunked.mismatched == whole.mismatched == int(((x - y).abs() > 0.5).sum())
    assert chunked.max_abs == whole.max_abs
    assert chunked.rel_l2 == pytest.approx(whole.rel_l2)


def test_dtypes_without_arithmetic_are_compared_bit_for_bit(tmp_path: Path) -> None:
    fp4 = all_dtypes()["float4_e2m1fn_x2"]
    changed = fp4.view(torch.uint8).clone()
    changed[0, 0] ^= 1
    a = _save(tmp_path / "a", {"q": fp4})
    b = _save(tmp_path / "b", {"q": changed.view(fp4.dtype)})
    delta = statevault.diff(a, b).tensors[0]
    assert delta.mismatched == 1 and delta.max_abs is None


def test_damaged_file_raises_instead_of_looking_different(tmp_path: Path) -> None:
    a = _save(tmp_path / "a", {"w": torch.ones(100)})
    b = _save(tmp_path / "b", {"w": torch.ones(100)})
    raw = bytearray(b.read_bytes())
    raw[-1] ^= 0xFF
    b.write_bytes(bytes(raw))
    with pytest.raises(statevault.ChecksumMismatchError, match="'w'"):
        statevault.diff(a, b)
