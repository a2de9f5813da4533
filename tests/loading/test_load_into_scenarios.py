"""A corpus of real-world checkpoint/model mismatches: each names its exact cause and fix.

Every scenario saves a real checkpoint (statevault, plain safetensors, or an in-memory dict),
then checks three things: strict loading raises one error whose message gives the expected
cause and fix and touches no weight; strict=False never raises and loads exactly what fits;
and the suggested fix really loads the checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import nn

import statevault
from helpers.scenarios import (
    SCENARIOS,
    Net,
    Scenario,
    TiedLM,
    assert_unchanged,
    compiled,
    compiled_in_ddp,
    dataparallel,
    imagenet_head,
    save_state,
    seeded,
    snapshot,
)
from statevault import StateDictMismatchError
from statevault.loading.options import source_code


@pytest.mark.parametrize("case", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_strict_names_cause_and_fix_and_touches_nothing(case: Scenario, tmp_path: Path) -> None:
    source = case.make_source(tmp_path)
    model = seeded(case.make_model, 2)
    before = snapshot(model)
    with pytest.raises(StateDictMismatchError) as caught:
        statevault.load_into(model, source, **case.options)
    message = str(caught.value)
    lines = message.splitlines()
    assert lines[1] == case.cause, message
    assert lines[2] == "  " + case.fix.format(source=source_code(source)), message
    assert caught.value.report.causes[0].kind == case.kind
    assert not caught.value.report.ok
    assert_unchanged(model, before)


@pytest.mark.parametrize("case", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_non_strict_loads_what_fits_and_reports_the_rest(case: Scenario, tmp_path: Path) -> None:
    source = case.make_source(tmp_path)
    model = seeded(case.make_model, 2)
    before = snapshot(model)
    report = statevault.load_into(model, source, strict=False, **case.options)
    assert report.causes[0].kind == case.kind
    assert report.causes[0].summary in case.cause
    reference = source if isinstance(source, dict) else statevault.load(source)
    after = model.state_dict()
    for key in report.matched:
        assert torch.equal(after[key], reference[key]), key
    # nothing is dropped silently: every model key is matched, missing or skipped, once
    accounted = [*report.matched, *report.missing_keys, *report.skipped]
    assert sorted(accounted) == sorted(after)
    for key in [*report.missing_keys, *report.skipped]:
        assert torch.equal(after[key], before[key]), f"{key} should keep its value"
    assert str(report).startswith(f"Loaded {len(report.matched)} of {len(after)} model tensor(s)")


@pytest.mark.parametrize(
    "case",
    [s for s in SCENARIOS if s.fixed_with or s.fixed_into],
    ids=[s.name for s in SCENARIOS if s.fixed_with or s.fixed_into],
)
def test_the_suggested_fix_loads_cleanly(case: Scenario, tmp_path: Path) -> None:
    source = case.make_source(tmp_path)
    model = seeded(case.make_model, 2)
    target = case.fixed_into(model) if case.fixed_into else model
    options = {**case.options, **case.fixed_with}
    report = statevault.load_into(target, source, **options)
    assert report.ok
    assert report.matched
    assert "all keys matched successfully" in str(report)


@pytest.mark.parametrize("make_source", [dataparallel, compiled, compiled_in_ddp])
def test_wrapper_prefixes_are_fixed_automatically_and_reported(
    make_source: Callable[[Path], Path], tmp_path: Path
) -> None:
    path = make_source(tmp_path)
    model = seeded(Net, 2)
    report = statevault.load_into(model, path)
    assert report.ok
    assert report.mappings and all(m.automatic for m in report.mappings)
    assert "auto_fix" in str(report)
    expected = seeded(Net, 1).state_dict()
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, expected[key]), key


def test_a_wrapped_model_loads_a_plain_checkpoint(tmp_path: Path) -> None:
    path = save_state(seeded(Net, 1).state_dict(), tmp_path)
    wrapped = nn.DataParallel(seeded(Net, 2))
    with pytest.raises(StateDictMismatchError) as caught:
        statevault.load_into(wrapped, path, auto_fix=False)
    assert caught.value.report.causes[0].kind == "model_wrapped"
    fix = f"statevault.load_into(model.module, {source_code(path)}, auto_fix=False)"
    assert fix in str(caught.value)
    report = statevault.load_into(wrapped, path)
    assert report.ok
    assert report.mappings[0].rule == "add 'module.' wrapper names"
    assert torch.equal(wrapped.module.fc.weight, seeded(Net, 1).fc.weight)


def test_tied_weights_saved_without_the_duplicate_name(tmp_path: Path) -> None:
    # safetensors.torch.save_model keeps one name per shared tensor: lm_head.weight is absent
    path = tmp_path / "lm.safetensors"
    safetensors.torch.save_model(seeded(TiedLM, 1), str(path))
    assert "lm_head.weight" not in safetensors.torch.load_file(str(path))
    model = seeded(TiedLM, 2)
    report = statevault.load_into(model, path)  # strict: the tie fills the absent key
    assert report.ok
    assert [(t.key, t.tied_to, t.how) for t in report.tied] == [
        ("lm_head.weight", "embed.weight", "filled through tie")
    ]
    assert "lm_head.weight = embed.weight (absent from the checkpoint; filled through the tie)" in (
        str(report)
    )
    assert model.lm_head.weight is model.embed.weight
    assert torch.equal(model.embed.weight, seeded(TiedLM, 1).embed.weight)


def test_tied_weights_kept_as_alias_by_statevault(tmp_path: Path) -> None:
    path = save_state(seeded(TiedLM, 1).state_dict(), tmp_path)
    report = statevault.load_into(seeded(TiedLM, 2), path)
    assert report.ok
    assert [(t.key, t.how) for t in report.tied] == [("lm_head.weight", "shared")]


def test_tied_in_model_but_stored_separately_says_which_wins(tmp_path: Path) -> None:
    state = {k: v.clone() for k, v in seeded(TiedLM, 1).state_dict().items()}
    state["lm_head.weight"] = torch.full_like(state["lm_head.weight"], 7.0)
    model = seeded(TiedLM, 2)
    report = statevault.load_into(model, save_state(state, tmp_path))
    assert [(t.key, t.how) for t in report.tied] == [("lm_head.weight", "stored separately")]
    assert "the later key's values win" in str(report)
    assert torch.equal(model.embed.weight, state["lm_head.weight"])  # torch order: later wins


def test_bf16_checkpoint_into_fp32_model_is_cast_and_reported(tmp_path: Path) -> None:
    source = seeded(Net, 1).to(torch.bfloat16)
    path = save_state(source.state_dict(), tmp_path)
    model = seeded(Net, 2)
    report = statevault.load_into(model, path)
    floating = [k for k, v in model.state_dict().items() if v.is_floating_point()]
    assert sorted(c.key for c in report.casts) == sorted(floating)
    assert {(c.checkpoint_dtype, c.model_dtype) for c in report.casts} == {("bfloat16", "float32")}
    assert f"bfloat16 -> float32: {len(floating)} tensor(s)" in str(report)
    assert model.fc.weight.dtype == torch.float32
    assert torch.equal(model.fc.weight, source.fc.weight.float())


def test_dtype_option_converts_the_module_and_reports(tmp_path: Path) -> None:
    reference = seeded(Net, 1)
    path = save_state(reference.state_dict(), tmp_path)
    model = seeded(Net, 2)
    report = statevault.load_into(model, path, dtype=torch.bfloat16)
    assert model.fc.weight.dtype == torch.bfloat16
    assert model.bn.num_batches_tracked.dtype == torch.int64  # only floating point converts
    assert torch.equal(model.fc.weight, reference.fc.weight.to(torch.bfloat16))
    assert {(c.checkpoint_dtype, c.model_dtype) for c in report.casts} == {("float32", "bfloat16")}
    assert "dtype=bfloat16" in str(report)


def test_changed_class_count_non_strict_skips_only_the_head(tmp_path: Path) -> None:
    path = imagenet_head(tmp_path)
    model = seeded(Net, 2)
    report = statevault.load_into(model, path, strict=False)
    assert report.skipped == ("fc.weight", "fc.bias")
    assert [(m.checkpoint_shape, m.model_shape) for m in report.shape_mismatches] == [
        ((1000, 8), (10, 8)),
        ((1000,), (10,)),
    ]
    assert "fc.weight: checkpoint [1000, 8] vs model [10, 8]" in str(report)
