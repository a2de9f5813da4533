"""Every printed fix works: for each cause, the fix from the error is run and the load succeeds.

For load_into, load_model and build_model, strict loading raises; the first cause's ``code``
must appear verbatim in the message, its options must be the ones the printed call passes,
and running that code must load the checkpoint with the right values (and, when building,
initialise whatever the file does not fill).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import statevault
from helpers.fixes import printed_options, run_fix
from helpers.scenarios import (
    SCENARIOS,
    Block,
    Classifier,
    Net,
    OldNorm,
    RenamedNet,
    Scenario,
    seeded,
)
from statevault import Cause, StateDictMismatchError


def _state(factory: Callable[[], nn.Module]) -> dict[str, torch.Tensor]:
    return dict(seeded(factory, 1).state_dict())


def _renamed(state: dict[str, torch.Tensor], old: str, new: str) -> dict[str, torch.Tensor]:
    return {k.replace(old, new): v for k, v in state.items()}


# What each scenario's fix must load: model key -> value (keys left out are not in the file)
EXPECTED: dict[str, Callable[[], dict[str, torch.Tensor]]] = {
    "dataparallel": lambda: _state(Net),
    "torch.compile": lambda: _state(Net),
    "compiled inside DataParallel": lambda: _state(Net),
    "renamed layer": lambda: _renamed(_state(Net), "fc.", "classifier."),
    "gamma/beta naming": lambda: _renamed(
        _renamed(_state(lambda: Block(OldNorm)), ".gamma", ".weight"), ".beta", ".bias"
    ),
    "transposed weight": lambda: _state(Net),
    "changed class count": lambda: {
        k: v for k, v in _state(lambda: Net(classes=1000)).items() if not k.startswith("fc.")
    },
    "backbone from a full classifier": lambda: {
        k.removeprefix("backbone."): v
        for k, v in _state(Classifier).items()
        if k.startswith("backbone.")
    },
    "backbone checkpoint into a full classifier": lambda: {
        f"backbone.{k}": v for k, v in _state(Net).items()
    },
    "BatchNorm num_batches_tracked missing": lambda: {
        k: v for k, v in _state(Net).items() if "num_batches" not in k
    },
}


class ConvHead(nn.Module):
    """Net with its head as a 1x1 convolution: the same weights in another shape."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Conv2d(8, 10, 1)


class WideHead(nn.Module):
    """Net built with another configuration: its head takes 9 features."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(9, 10)


class WithTable(Net):
    """Net with a table computed in __init__ and not saved (a non-persistent buffer)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("table", torch.arange(4.0), persistent=False)


def _save_state(state: dict[str, torch.Tensor], tmp: Path) -> Path:
    path = tmp / "extra.safetensors"
    statevault.save(state, path)
    return path


def _extra(
    name: str,
    model: Callable[[], nn.Module],
    source: Callable[[Path], Any],
    kind: str,
    **options: Any,
) -> Scenario:
    return Scenario(name, model, source, kind, cause="", fix="", options=options)


# Causes the message-text corpus above does not cover; their fixes are run the same way.
EXTRA = [
    _extra(
        "compiled submodule",
        Classifier,
        lambda tmp: _save_state(
            _renamed(_state(Classifier), "backbone.", "backbone._orig_mod."), tmp
        ),
        "wrapper_names",
        auto_fix=False,
    ),
    _extra(
        "1x1 conv head",
        ConvHead,
        lambda tmp: _save_state(_state(Net), tmp),
        "reshaped",
    ),
    _extra("other configuration", WideHead, lambda tmp: _save_state(_state(Net), tmp), "shape"),
    _extra(
        "prefix selecting nothing",
        Net,
        lambda tmp: _save_state(_state(Classifier), tmp),
        "empty_selection",
        prefix="encoder.",
    ),
    _extra(
        "saved non-persistent buffer",
        WithTable,
        lambda tmp: _save_state({**_state(Net), "table": torch.full((4,), 9.0)}, tmp),
        "non_persistent_buffer",
    ),
    _extra(
        "new head",
        Classifier,
        lambda tmp: _save_state(
            {
                **{k: v for k, v in _state(Classifier).items() if not k.startswith("head.")},
                "pretraining_head.weight": torch.zeros(5, 10),
            },
            tmp,
        ),
        "new_head",
    ),
]
EXPECTED.update(
    {
        "compiled submodule": lambda: _state(Classifier),
        "1x1 conv head": lambda: {
            **_state(Net),
            "fc.weight": _state(Net)["fc.weight"].reshape(10, 8, 1, 1),
        },
        "other configuration": lambda: {k: v for k, v in _state(Net).items() if k != "fc.weight"},
        "prefix selecting nothing": EXPECTED["backbone from a full classifier"],
        "saved non-persistent buffer": lambda: {**_state(Net), "table": torch.arange(4.0)},
        "new head": lambda: {
            k: v for k, v in _state(Classifier).items() if not k.startswith("head.")
        },
    }
)
CASES = [*SCENARIOS, *EXTRA]
assert set(EXPECTED) == {s.name for s in CASES}  # a new scenario needs its expectation


def _first_cause(error: StateDictMismatchError) -> Cause:
    cause = error.report.causes[0]
    assert f"  Fix: {cause.fix}" in str(error)
    assert cause.code and cause.code in cause.fix
    if cause.options:  # the structured options are exactly what the printed call adds
        printed = printed_options(cause.code)
        assert {k: printed[k] for k in cause.options} == {
            k: list(v) if isinstance(v, tuple) else v for k, v in cause.options.items()
        }
    return cause


def _factory_name(factory: Callable[[], nn.Module]) -> str:
    name = getattr(factory, "__name__", "")
    return name if name.isidentifier() and name != "<lambda>" else "factory"


def _namespace(case: Scenario, source: Any, model: nn.Module | None) -> dict[str, Any]:
    namespace: dict[str, Any] = {"statevault": statevault, "torch": torch, "model": model}
    namespace[_factory_name(case.make_model)] = case.make_model
    if isinstance(source, dict):
        namespace["state"] = source
    return namespace


def _assert_loaded(model: nn.Module, expected: dict[str, torch.Tensor]) -> None:
    state = {**dict(model.named_buffers()), **model.state_dict()}  # non-persistent ones too
    for key, value in expected.items():
        assert torch.equal(state[key], value), key
    for key, value in state.items():  # whatever the file did not fill holds real numbers
        if value.is_floating_point():
            assert torch.isfinite(value).all(), key


@pytest.mark.parametrize("entry", ["load_into", "load_model"])
@pytest.mark.parametrize("case", CASES, ids=[s.name for s in CASES])
def test_the_printed_fix_loads_into_an_existing_model(
    case: Scenario, entry: str, tmp_path: Path
) -> None:
    source = case.make_source(tmp_path)
    model = seeded(case.make_model, 2)
    with pytest.raises(StateDictMismatchError) as caught:
        getattr(statevault, entry)(model, source, **case.options)
    cause = _first_cause(caught.value)
    assert cause.kind == case.kind
    assert cause.code.count(f"statevault.{entry}(") == 1, cause.code
    report = run_fix(cause.code, _namespace(case, source, model))
    assert isinstance(report, statevault.LoadReport)
    assert report.matched
    _assert_loaded(model, EXPECTED[case.name]())


@pytest.mark.parametrize("case", CASES, ids=[s.name for s in CASES])
def test_the_printed_fix_builds_the_model(case: Scenario, tmp_path: Path) -> None:
    source = case.make_source(tmp_path)
    with pytest.raises(StateDictMismatchError) as caught:
        statevault.build_model(case.make_model, source, **case.options)
    cause = _first_cause(caught.value)
    assert cause.kind == case.kind
    assert "statevault.build_model(" in cause.code and "load_into" not in cause.code
    assert not cause.submodule  # a model being built has no submodule to load into yet
    model = run_fix(cause.code, _namespace(case, source, None))
    assert isinstance(model, nn.Module)
    assert not any(t.is_meta for t in model.state_dict().values())
    _assert_loaded(model, EXPECTED[case.name]())


@pytest.mark.parametrize("case", CASES, ids=[s.name for s in CASES])
def test_check_prints_check_calls_or_the_load_they_stand_for(
    case: Scenario, tmp_path: Path
) -> None:
    source = case.make_source(tmp_path)
    model = seeded(case.make_model, 2)
    cause = statevault.check(model, source, **case.options).causes[0]
    if cause.options.get("strict") is False:
        assert cause.code.startswith("statevault.load_into(")  # check has no strict
    elif cause.options or cause.submodule:
        assert cause.code.startswith("statevault.check(")
        report = run_fix(cause.code, _namespace(case, source, model))
        assert report.ok and report.dry_run


def test_fixes_keep_the_callers_options_and_render_callables_by_name(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.safetensors"
    statevault.save(nn.DataParallel(Net()).state_dict(), path)
    with pytest.raises(StateDictMismatchError) as caught:
        statevault.load_into(
            RenamedNet(), path, auto_fix=False, rename=lambda k: k, dtype=torch.float64
        )
    fix = caught.value.report.causes[0].code
    assert "auto_fix=False" in fix and "rename=rename" in fix and "dtype=torch.float64" in fix
    assert 'strip_prefix="module."' in fix


@pytest.mark.parametrize("entry", ["load_into", "build_model"])
def test_a_wrapped_model_and_a_plain_checkpoint_fix(entry: str, tmp_path: Path) -> None:
    path = tmp_path / "plain.safetensors"
    statevault.save(seeded(Net, 1), path)

    def wrapped() -> nn.Module:
        return nn.DataParallel(seeded(Net, 2))

    model = wrapped()
    with pytest.raises(StateDictMismatchError) as caught:
        if entry == "load_into":
            statevault.load_into(model, path, auto_fix=False)
        else:
            statevault.build_model(wrapped, path, auto_fix=False)
    cause = _first_cause(caught.value)
    assert cause.kind == "model_wrapped"
    result = run_fix(cause.code, {"statevault": statevault, "model": model, "wrapped": wrapped})
    loaded = model if entry == "load_into" else result
    assert "strict" not in cause.options  # the whole checkpoint maps: nothing left out
    _assert_loaded(loaded, {f"module.{k}": v for k, v in _state(Net).items()})
