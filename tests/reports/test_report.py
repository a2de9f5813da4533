"""LoadReport as a value: grouping, capping, dict form, error message."""

from __future__ import annotations

import json

from statevault.reports.load_entries import Cause, CauseKind, TiedKey, TieStatus
from statevault.reports.load_report import LoadReport, ShapeMismatch, group_by_module


def _layer(i: int) -> list[str]:
    return [f"encoder.layers.{i}.{p}.{t}" for p in ("q", "k") for t in ("weight", "bias")]


def test_a_whole_missing_module_is_one_line() -> None:
    universe = [k for i in range(6) for k in _layer(i)]
    assert group_by_module(_layer(3), universe, "missing") == [
        "encoder.layers.3: 4 missing (all of it)"
    ]
    partial = ["encoder.layers.3.q.bias", "encoder.layers.3.k.bias"]
    assert group_by_module(partial, universe, "missing") == [
        "encoder.layers.3.q: 1 missing (bias)",
        "encoder.layers.3.k: 1 missing (bias)",
    ]


def test_lists_are_capped() -> None:
    keys = [f"block{i}.weight" for i in range(50)]
    lines = group_by_module(keys, [*keys, *(f"block{i}.bias" for i in range(50))], "missing")
    assert len(lines) == 21
    assert lines[-1] == "... and 30 more"


def test_str_to_dict_and_error_message() -> None:
    report = LoadReport(
        source="ckpt.safetensors",
        target="Net",
        matched=("a.weight",),
        missing_keys=[f"m{i}.weight" for i in range(30)],
        shape_mismatches=(ShapeMismatch("fc.weight", (3, 2), (2, 3)),),
        causes=(Cause(CauseKind.TRANSPOSED, "it is transposed", "transpose it"),),
    )
    assert not report.ok
    text = str(report)
    assert text.splitlines()[0] == "Loaded 1 of 32 model tensor(s) from ckpt.safetensors into Net"
    assert "Likely cause: it is transposed\n  Fix: transpose it" in text
    assert "fc.weight: checkpoint [3, 2] vs model [2, 3]" in text
    full = report.to_dict()
    assert len(full["missing_keys"]) == 30 and full["counts"]["missing_keys"] == 30
    assert full["shape_mismatches"] == [
        {"key": "fc.weight", "checkpoint_shape": [3, 2], "model_shape": [2, 3]}
    ]
    capped = report.to_dict(limit=20)
    assert len(capped["missing_keys"]) == 20 and capped["truncated"] == {"missing_keys": 10}
    json.dumps(capped)
    message = report.error_message()
    assert message.startswith(
        "Cannot load ckpt.safetensors into Net: 30 missing, 0 unexpected, 1 shape mismatch(es)."
    )
    assert message.splitlines()[1] == "Likely cause: it is transposed"
    assert "Nothing was loaded." in message


def test_clean_report_reads_like_torch() -> None:
    report = LoadReport(source="x", matched=("w",))
    assert report.ok and report.missing_keys == [] and report.unexpected_keys == []
    assert str(report) == "Loaded 1 of 1 model tensor(s) from x: all keys matched successfully"


def test_repr_is_one_short_line_at_any_size() -> None:
    keys = [f"layers.{i}.weight" for i in range(100_000)]
    big = LoadReport(
        source="ckpt.safetensors",
        matched=tuple(keys[:120]),
        missing_keys=keys[120:122],
        unexpected_keys=["extra.weight"],
        shape_mismatches=(ShapeMismatch("fc.weight", (3, 2), (2, 3)),),
    )
    assert repr(big) == ("<LoadReport: 120 loaded, 2 missing, 1 unexpected, 1 shape mismatch(es)>")
    huge = LoadReport(source="x", missing_keys=keys)
    assert repr(huge) == "<LoadReport: 0 loaded, 100000 missing, 0 unexpected>"
    assert repr(LoadReport(source="x", matched=tuple(keys))) == (
        "<LoadReport: 100000 loaded, all keys matched successfully>"
    )
    assert repr(LoadReport(source="x", matched=("w",), dry_run=True)) == (
        "<LoadReport: 1 would load, all keys matched successfully>"
    )
    assert "\n  layers.121: 1 missing (all of it)" in str(big)  # str() keeps the full text


def test_unpacks_like_torchs_incompatible_keys() -> None:
    report = LoadReport(source="x", missing_keys=["a"], unexpected_keys=["b", "c"])
    missing_keys, unexpected_keys = report
    assert (missing_keys, unexpected_keys) == (["a"], ["b", "c"])


def test_to_dict_uses_the_field_names_and_plain_values() -> None:
    report = LoadReport(
        source="x",
        missing_keys=["a"],
        unexpected_keys=["b"],
        tied=(TiedKey("head.weight", "embed.weight", TieStatus.FILLED_THROUGH_TIE),),
        causes=(Cause(CauseKind.RENAMED, "renamed", "fix", {"strict": False}),),
    )
    data = report.to_dict()
    assert data["missing_keys"] == ["a"] and data["unexpected_keys"] == ["b"]
    assert data["counts"]["missing_keys"] == 1 and data["counts"]["unexpected_keys"] == 1
    assert type(data["tied"][0]["how"]) is str and data["tied"][0]["how"] == "filled through tie"
    assert type(data["causes"][0]["kind"]) is str and data["causes"][0]["kind"] == "renamed"
    assert json.loads(json.dumps(data)) == data
