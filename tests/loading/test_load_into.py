"""load_into mechanics: sources, dry runs, no data read before checks, hooks, scaling."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
from torch import nn

import statevault
from statevault import (
    ChecksumMismatchError,
    InvalidArgumentError,
    KeyMappingError,
    StateDictMismatchError,
)


class Net(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, classes)


def _net(seed: int, classes: int = 10) -> Net:
    torch.manual_seed(seed)
    return Net(classes)


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _equal_states(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _sources(tmp_path: Path, state: dict[str, torch.Tensor]) -> dict[str, Any]:
    vault = tmp_path / "vault.safetensors"
    statevault.save(state, vault)
    plain = tmp_path / "plain.safetensors"
    safetensors.torch.save_file(state, str(plain))
    return {"statevault": vault, "safetensors": plain, "memory": dict(state)}


@pytest.mark.parametrize("kind", ["statevault", "safetensors", "memory"])
def test_every_source_kind_loads_and_reports_the_same(kind: str, tmp_path: Path) -> None:
    reference = _net(1)
    state = {k: v.clone() for k, v in reference.state_dict().items()}
    source = _sources(tmp_path, state)[kind]
    model = _net(2)
    report = statevault.load_into(model, source)
    assert report.ok
    assert report.matched == tuple(reference.state_dict())
    assert _equal_states(model.state_dict(), reference.state_dict())


def test_a_state_dict_source_is_not_mutated(tmp_path: Path) -> None:
    state = {"module." + k: v.clone() for k, v in _net(1, classes=4).state_dict().items()}
    keys, copies = list(state), {k: v.clone() for k, v in state.items()}
    model = _net(2)
    report = statevault.load_into(model, state, strict=False, dtype=torch.float64)
    assert report.skipped == ("fc.weight", "fc.bias")
    assert list(state) == keys
    assert all(torch.equal(state[k], copies[k]) and state[k].dtype == copies[k].dtype for k in keys)


@pytest.mark.parametrize("kind", ["statevault", "safetensors", "memory"])
def test_check_and_dry_run_touch_no_weight(kind: str, tmp_path: Path) -> None:
    state = dict(_net(1, classes=4).state_dict())
    source = _sources(tmp_path, state)[kind]
    model = _net(2)
    before = _snapshot(model)
    report = statevault.check(model, source, dtype=torch.bfloat16)
    assert report.dry_run and not report.ok
    assert str(report).startswith("Would load 7 of 9 model tensor(s)")
    assert report.causes[0].kind == "first_dim"
    with pytest.raises(StateDictMismatchError):
        statevault.load_into(model, source, dry_run=True)
    fitting = {k: v for k, v in state.items() if not k.startswith("fc.")}
    dry = statevault.load_into(model, fitting, dry_run=True, strict=False)
    assert dry.matched and dry.missing_keys == ["fc.weight", "fc.bias"]
    assert model.fc.weight.dtype == torch.float32
    assert _equal_states(model.state_dict(), before)


def _corrupt_data(path: Path, name: str) -> None:
    with statevault.Checkpoint(path) as checkpoint:
        offset = checkpoint.tensors[name].offset  # inside the tensor's data, not the header
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_no_tensor_data_is_read_before_strict_checks_pass(tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    statevault.save(dict(_net(1, classes=4).state_dict()), path)
    _corrupt_data(path, "conv.weight")
    model = _net(2)
    # a data read would raise ChecksumMismatchError; the header alone decides these
    assert not statevault.check(model, path).ok
    with pytest.raises(StateDictMismatchError):
        statevault.load_into(model, path)
    with pytest.raises(ChecksumMismatchError):
        statevault.load_into(model, path, strict=False)


def test_prefix_selects_a_subtree_and_lists_what_it_ignored(tmp_path: Path) -> None:
    state = {f"encoder.{k}": v for k, v in _net(1).state_dict().items()}
    state |= {f"decoder.{k}": torch.zeros_like(v) for k, v in _net(3).state_dict().items()}
    model = _net(2)
    report = statevault.load_into(model, state, prefix="encoder.")
    assert report.ok
    assert report.ignored == tuple(k for k in state if k.startswith("decoder."))
    assert "decoder: 9 ignored (all of it)" in str(report)
    assert torch.equal(model.fc.weight, state["encoder.fc.weight"])


def test_prefix_that_selects_nothing_says_which_exist() -> None:
    state = {f"encoder.{k}": v for k, v in _net(1).state_dict().items()}
    report = statevault.check(_net(2), state, prefix="backbone.")
    assert report.causes[0].kind == "empty_selection"
    assert report.causes[0].fix == (
        'statevault.check(model, state, prefix="encoder.") '
        '(the checkpoint\'s top-level prefixes are "encoder.")'
    )
    assert report.causes[0].options == {"prefix": "encoder."}


def test_rename_callable_and_collisions() -> None:
    state = {k.replace("fc.", "head."): v for k, v in _net(1).state_dict().items()}
    model = _net(2)

    def head_to_fc(name: str) -> str:
        return name.replace("head.", "fc.")

    report = statevault.load_into(model, state, rename=head_to_fc)
    assert report.ok
    assert report.mappings[0].rule == "rename with head_to_fc()"
    assert torch.equal(model.fc.bias, state["head.bias"])
    with pytest.raises(KeyMappingError, match="both become"):
        statevault.load_into(model, state, rename=[(r"\.(weight|bias)$", ".weight")])


def test_bad_options_are_refused_with_our_error_naming_the_value() -> None:
    with pytest.raises(InvalidArgumentError, match=r"dtype=torch.int64 is not a floating-point"):
        statevault.load_into(_net(1), {}, dtype=torch.int64)
    with pytest.raises(InvalidArgumentError, match=r"dtype='bf17' .* bf16"):
        statevault.load_into(_net(1), {}, dtype="bf17")
    with pytest.raises(InvalidArgumentError, match=r"prefix='' is not a prefix"):
        statevault.load_into(_net(1), {}, prefix="")
    with pytest.raises(InvalidArgumentError, match=r"prefix=\['a.'\] is not a prefix"):
        statevault.check(_net(1), {}, prefix=["a."])  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match=r"strip_prefix=3 "):
        statevault.build_model(lambda: _net(1), {}, strip_prefix=3)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match=r"rename='fc' "):
        statevault.materialize(_net(1), {}, rename="fc")  # type: ignore[arg-type]


@pytest.mark.parametrize("spelling", ["bf16", "BF16", "bfloat16", "torch.bfloat16"])
def test_dtype_takes_every_spelling(tmp_path: Path, spelling: str) -> None:
    source = _net(1)
    path = tmp_path / "net.safetensors"
    statevault.save(source.state_dict(), path)
    model = _net(2)
    report = statevault.load_into(model, path, dtype=spelling)
    assert report.ok and model.fc.weight.dtype == torch.bfloat16
    assert torch.equal(model.fc.weight, source.fc.weight.to(torch.bfloat16))
    assert report.notes[-1] == "dtype=bfloat16: floating-point tensors are stored as that"
    built = statevault.build_model(lambda: _net(3), path, dtype=spelling)
    assert built.fc.weight.dtype == torch.bfloat16
    assert torch.equal(built.fc.weight, model.fc.weight)


def test_strip_prefix_str_is_one_prefix_and_a_list_is_several(tmp_path: Path) -> None:
    source = _net(1)
    state = {f"model.{k}": v for k, v in source.state_dict().items()}
    model = _net(2)
    report = statevault.load_into(model, state, strip_prefix="model.", auto_fix=False)
    assert report.ok and torch.equal(model.fc.weight, source.fc.weight)
    mixed = {**state, "odel.x": torch.zeros(1)}  # what stripping letters one by one would give
    report = statevault.load_into(_net(2), mixed, strip_prefix=["module.", "model."], strict=False)
    assert report.unexpected_keys == ["odel.x"] and not report.missing_keys


class Hooked(nn.Module):
    """A module whose loading is customised: a pre-hook renames an old key on the fly."""

    def __init__(self) -> None:
        super().__init__()
        self.net = Net()
        self.calls = 0
        self._register_load_state_dict_pre_hook(self._migrate)

    def _migrate(self, state: dict[str, Any], prefix: str, *args: Any) -> None:
        self.calls += 1


def test_custom_hooks_run_with_the_same_report(tmp_path: Path) -> None:
    state = {f"net.{k}": v for k, v in _net(1, classes=4).state_dict().items()}
    path = tmp_path / "ckpt.safetensors"
    statevault.save(state, path)
    hooked = Hooked()
    before = _snapshot(hooked)
    with pytest.raises(StateDictMismatchError) as caught:
        statevault.load_into(hooked, path)
    assert hooked.calls == 0
    assert _equal_states(hooked.state_dict(), before)
    assert caught.value.report.causes[0].kind == "first_dim"

    report = statevault.load_into(hooked, path, strict=False)
    assert hooked.calls == 1
    assert report.notes[-1] == "custom load hooks found: loaded through module.load_state_dict"
    plain = nn.Module()
    plain.net = _net(2)
    fast = statevault.load_into(plain, path, strict=False)
    for field in (
        "matched",
        "missing_keys",
        "unexpected_keys",
        "shape_mismatches",
        "causes",
        "tied",
    ):
        assert getattr(report, field) == getattr(fast, field), field
    assert torch.equal(hooked.net.conv.weight, state["net.conv.weight"])
    assert torch.equal(hooked.net.fc.weight, before["net.fc.weight"])  # skipped, untouched


def _layers(n: int) -> nn.ModuleList:
    return nn.ModuleList(nn.Linear(2, 2) for _ in range(n))


def _calls(run: Any) -> int:
    """How many Python and builtin function calls ``run`` makes: a count, not a time, so a
    busy machine cannot change it (quadratic Python code shows up as quadratic calls)."""
    count = 0

    def profile(frame: Any, event: str, arg: Any) -> None:
        nonlocal count
        if event in ("call", "c_call"):
            count += 1

    sys.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(None)
    return count


def test_thousands_of_layers_scale_linearly(tmp_path: Path) -> None:
    small, large = 1000, 8000
    runs = {}
    for n in (small, large):
        path = tmp_path / f"{n}.safetensors"
        statevault.save(dict(_layers(n).state_dict()), path)
        model = _layers(n)
        wrapped = {f"module.{k}": v for k, v in model.state_dict().items()}
        report = statevault.load_into(model, path)
        assert report.ok and len(report.matched) == 2 * n

        def run(m: nn.Module = model, p: Path = path, w: dict[str, Any] = wrapped) -> None:
            statevault.load_into(m, p)
            statevault.check(m, w, auto_fix=False)  # the diagnosis path too

        runs[n] = run
    calls = {n: _calls(run) for n, run in runs.items()}
    # 8x the layers: linear code makes ~8x the calls, quadratic ~64x
    assert calls[large] < 10 * calls[small], calls
