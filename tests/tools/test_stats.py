"""stats(): every kind of checkpoint, exact numbers, and flags that name what is wrong."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

import statevault
from helpers.samples import flip_byte, training_state, write_sharded
from helpers.stats_reference import assert_matches
from statevault.reports.stats_report import DAMAGED, WARNING, TensorStats
from statevault.tools.tensor_stats import CHUNK_ELEMENTS

NAN, INF = math.nan, math.inf


def numbers(t: TensorStats) -> dict[str, Any]:
    keys = ("values", "nan", "posinf", "neginf", "zeros", "minimum", "maximum", "mean", "std")
    return {key: getattr(t, key) for key in (*keys, "norm")}


def kinds(t: TensorStats) -> list[str]:
    return [flag.kind for flag in t.flags]


def sample() -> dict[str, torch.Tensor]:
    """Random and adversarial tensors, one of them streamed in several chunks."""
    g = torch.Generator().manual_seed(0)
    return {
        "big": torch.randn(CHUNK_ELEMENTS * 2 + 7, generator=g) * 2 + 1,
        "half": torch.randn(64, 33, generator=g).half(),
        "bf16": torch.randn(1000, generator=g).bfloat16(),
        "f64": torch.randn(50, generator=g, dtype=torch.float64) * 1e200,
        "ints": torch.randint(-(2**40), 2**40, (77,), generator=g),
        "flags": torch.tensor([True, False, True, True]),
        "sub": torch.tensor([1e-45, -3e-45, 0.0]),
        "empty": torch.empty(0, 3),
        "mixed": torch.tensor([1.0, NAN, INF, -INF, 0.0, 2.5]),
    }


def test_numbers_match_the_reference_for_every_tensor(tmp_path: Path) -> None:
    tensors = sample()
    path = tmp_path / "s.safetensors"
    statevault.save(tensors, path)
    report = statevault.stats(path)
    assert sorted(t.name for t in report.tensors) == sorted(tensors)
    for t in report.tensors:
        assert_matches(numbers(t), tensors[t.name])
        assert (t.dtype, t.shape) == (str(tensors[t.name].dtype)[6:], tuple(tensors[t.name].shape))
    assert report.checksummed and report.kind == "statevault"


def test_every_input_kind_gives_the_same_numbers(tmp_path: Path) -> None:
    tensors = {k: v for k, v in sample().items() if k in ("big", "half", "ints", "mixed")}
    save_file(tensors, str(tmp_path / "plain.safetensors"))
    torch.save(tensors, tmp_path / "model.pt")
    write_sharded(tmp_path / "sharded", tensors, shards=2)
    statevault.save(tensors, tmp_path / "sv.safetensors")
    found = {}
    for name in ("plain.safetensors", "model.pt", "sharded", "sv.safetensors"):
        report = statevault.stats(tmp_path / name)
        found[name] = {t.name: numbers(t) for t in report.tensors}
        for t in report.tensors:
            assert_matches(numbers(t), tensors[t.name])
        assert report.checksummed is (name == "sv.safetensors"), name
        assert bool(report.notes) is not report.checksummed  # says what was not verified
    assert len({json.dumps(v, sort_keys=True) for v in found.values()}) == 1


def test_a_training_folder_reads_model_and_optimizer(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=16,
    )  # fmt: skip
    model = transformers.BertModel(config)
    model.save_pretrained(tmp_path / "hf")
    report = statevault.stats(tmp_path / "hf")
    state = model.state_dict()
    by_name = {t.name: t for t in report.tensors}
    some = "encoder.layer.1.attention.self.query.weight"
    assert_matches(numbers(by_name[some]), state[some])


def test_nan_and_inf_are_damage_and_name_the_tensor(tmp_path: Path) -> None:
    path = tmp_path / "s.safetensors"
    statevault.save({"ok": torch.ones(3) * torch.arange(3), "bad": sample()["mixed"]}, path)
    report = statevault.stats(path)
    ok, bad = sorted(report.tensors, key=lambda t: t.name != "ok")
    assert report.damaged and bad.damaged and not ok.damaged
    assert kinds(bad) == ["nan", "inf"]
    assert "1 NaN value of 6" in bad.flags[0].reason
    assert "+inf 1, -inf 1" in bad.flags[1].reason
    assert str(report).startswith(f"{path}: DAMAGED: 1 of 2 tensor(s)")


def test_optimizer_second_moment_with_nan_is_named_as_such(tmp_path: Path) -> None:
    state = training_state()
    second = state["optim"]["state"][0]["exp_avg_sq"]
    second.view(-1)[0] = NAN
    state["optim"]["state"][1]["exp_avg_sq"].view(-1)[0] = -1.0
    path = tmp_path / "train.safetensors"
    statevault.save(state, path)
    report = statevault.stats(path)
    by_name = {t.name: t for t in report.tensors}
    assert kinds(by_name["optim.state.0.exp_avg_sq"]) == ["second_moment_nan"]
    assert "exp_avg_sq" in by_name["optim.state.0.exp_avg_sq"].flags[0].reason
    assert kinds(by_name["optim.state.1.exp_avg_sq"]) == ["negative_second_moment"]
    assert report.damaged
    assert report.state["epoch"] == 3  # non-tensor state comes along


def test_half_precision_overflow_and_saturation(tmp_path: Path) -> None:
    path = tmp_path / "s.safetensors"
    wide = torch.tensor([1.0, 1e39, -2.0])
    statevault.save(
        {
            "cast": wide.bfloat16(),  # 1e39 is beyond bfloat16: +inf
            "clamped": torch.tensor([65504.0, 1.0, -3.0]).half(),
        },
        path,
    )
    cast, clamped = sorted(statevault.stats(path).tensors, key=lambda t: t.name)
    assert kinds(cast) == ["inf", "overflow"] and cast.posinf == 1
    assert "bfloat16 values overflowed" in cast.flags[1].reason
    assert kinds(clamped) == ["saturated"] and clamped.flags[0].severity == WARNING


def test_zeros_constant_and_scalars(tmp_path: Path) -> None:
    path = tmp_path / "s.safetensors"
    tensors = {
        "bias": torch.zeros(8),
        "scale": torch.full((8,), 1.0),
        "step": torch.tensor(0.0),
        "fine": torch.arange(8.0),
    }
    statevault.save(tensors, path)
    report = statevault.stats(path)
    found = {t.name: kinds(t) for t in report.tensors}
    assert found == {"bias": ["all_zeros"], "scale": ["constant"], "step": [], "fine": []}
    assert not report.damaged and {t.name for t in report.flagged} == {"bias", "scale"}
    assert "every value is 1" in str(report)


def test_a_norm_far_from_its_siblings_is_flagged(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(1)
    tensors = {f"layers.{i}.mlp.weight": torch.randn(16, 16, generator=g) for i in range(6)}
    tensors["layers.4.mlp.weight"] *= 50
    tensors |= {f"layers.{i}.norm.weight": torch.rand(16, generator=g) for i in range(3)}
    tensors["layers.2.norm.weight"] *= 100  # three siblings only: not enough to judge
    path = tmp_path / "s.safetensors"
    statevault.save(tensors, path)
    flagged = {t.name: kinds(t) for t in statevault.stats(path).flagged}
    assert flagged == {"layers.4.mlp.weight": ["norm_outlier"]}


def test_damaged_bytes_are_a_flag_and_the_others_still_measured(tmp_path: Path) -> None:
    path = tmp_path / "s.safetensors"
    tensors = sample()
    statevault.save(tensors, path)
    with statevault.Checkpoint(path) as ckpt:
        info = ckpt.tensors["big"]
        flip_byte(path, info.offset + 5)
    report = statevault.stats(path)
    by_name = {t.name: t for t in report.tensors}
    assert kinds(by_name["big"])[0] == "checksum" and by_name["big"].damaged
    assert "restore the file" in by_name["big"].flags[0].reason
    assert all(not t.damaged for name, t in by_name.items() if name not in ("big", "mixed"))


def test_histograms_count_every_finite_value(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    tensors = sample()
    path = tmp_path / "s.safetensors"
    statevault.save(tensors, path)
    report = statevault.stats(path, histogram_bins=20)
    for t in report.tensors:
        values = tensors[t.name].double().reshape(-1).numpy()
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            assert t.histogram is None
            continue
        assert t.histogram is not None and len(t.histogram.counts) == 20
        assert sum(t.histogram.counts) == finite.size, t.name
        if t.minimum != t.maximum:
            expected, _ = np.histogram(finite, bins=20, range=(t.minimum, t.maximum))
            assert list(t.histogram.counts) == expected.tolist(), t.name
    assert statevault.stats(path).tensors[0].histogram is None  # only when asked


def test_to_dict_is_strict_json(tmp_path: Path) -> None:
    path = tmp_path / "s.safetensors"
    statevault.save({"huge": torch.full((4,), 1.5e308, dtype=torch.float64), **sample()}, path)
    data = statevault.stats(path, histogram_bins=4).to_dict()
    text = json.dumps(data, allow_nan=False)
    back = json.loads(text)
    huge = next(t for t in back["tensors"] if t["name"] == "huge")
    assert huge["norm"] == "inf"  # beyond float64: said, not a crash
    assert back["damaged"] is True and back["tensor_count"] == 10
    mixed = next(t for t in back["tensors"] if t["name"] == "mixed")
    assert (mixed["nan"], mixed["posinf"], mixed["neginf"]) == (1, 1, 1)
    assert [f["severity"] for f in mixed["flags"]] == [DAMAGED, DAMAGED]


def test_dtypes_without_arithmetic_are_listed_without_numbers(tmp_path: Path) -> None:
    path = tmp_path / "s.safetensors"
    raw = torch.zeros(4, dtype=torch.uint8).view(torch.float4_e2m1fn_x2)
    statevault.save({"packed": raw, "x": torch.ones(2)}, path)
    packed = next(t for t in statevault.stats(path).tensors if t.name == "packed")
    assert (packed.dtype, packed.values, packed.mean, packed.flags) == (
        "float4_e2m1fn_x2",
        0,
        None,
        (),
    )


def test_progress_hears_every_byte(tmp_path: Path) -> None:
    path = tmp_path / "s.safetensors"
    statevault.save(sample(), path)
    seen: list[int] = []

    class Counter:
        def start(self, total: int) -> None:
            seen.append(total)

        def advance(self, nbytes: int) -> None:
            seen.append(nbytes)

    report = statevault.stats(path, progress=Counter(), threads=3)
    assert seen[0] == sum(seen[1:]) == report.nbytes


def test_bad_bin_count_is_refused() -> None:
    with pytest.raises(statevault.InvalidArgumentError, match="histogram_bins"):
        statevault.stats("unused", histogram_bins=-1)
