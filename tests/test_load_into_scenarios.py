"""A corpus of real-world checkpoint/model mismatches: each names its exact cause and fix.

Every scenario saves a real checkpoint (statevault, plain safetensors, or an in-memory dict),
then checks three things: strict loading raises one error whose message gives the expected
cause and fix and touches no weight; strict=False never raises and loads exactly what fits;
and the suggested fix really loads the checkpoint.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
from torch import nn

import statevault
from statevault import StateDictMismatchError
from statevault._load_into import source_code


class Net(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, classes)


class RenamedNet(nn.Module):
    """Net after a refactor that renamed the head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.classifier = nn.Linear(8, 10)


class Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = Net()
        self.head = nn.Linear(10, 3)


class OldNorm(nn.Module):
    """A layer norm as old code (and TF ports) named it: gamma/beta."""

    def __init__(self) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.randn(16))
        self.beta = nn.Parameter(torch.randn(16))


class Block(nn.Module):
    def __init__(self, norm: Callable[[], nn.Module]) -> None:
        super().__init__()
        self.proj = nn.Linear(16, 16)
        self.norm = norm()


class TiedLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.body = nn.Linear(16, 16)
        self.lm_head = nn.Linear(16, 50, bias=False)
        self.lm_head.weight = self.embed.weight


def _seeded(factory: Callable[[], nn.Module], seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return factory()


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _assert_unchanged(module: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = module.state_dict()
    assert after.keys() == before.keys()
    for key, tensor in before.items():
        assert torch.equal(after[key], tensor), f"{key} changed"


@dataclass
class Scenario:
    name: str
    make_model: Callable[[], nn.Module]
    make_source: Callable[[Path], Any]  # tmp_path -> path or state dict
    kind: str
    cause: str
    fix: str
    options: dict[str, Any] = field(default_factory=dict)  # passed to every load in the case
    fixed_with: dict[str, Any] = field(default_factory=dict)  # the fix, as load_into options
    fixed_into: Callable[[nn.Module], nn.Module] | None = None  # the fix, as a submodule


def _save(state: dict[str, torch.Tensor], tmp: Path) -> Path:
    path = tmp / "ckpt.safetensors"
    statevault.save(state, path)
    return path


def _dataparallel(tmp: Path) -> Path:
    return _save(nn.DataParallel(_seeded(Net, 1)).state_dict(), tmp)


def _compile(module: nn.Module) -> nn.Module:
    """torch.compile's wrapper (never run, so nothing is compiled): its keys gain _orig_mod."""
    with warnings.catch_warnings():  # torch's own import-time deprecations, not ours
        warnings.simplefilter("ignore", DeprecationWarning)
        compiled = torch.compile(module)
    assert isinstance(compiled, nn.Module)
    return compiled


def _compiled(tmp: Path) -> Path:
    return _save(_compile(_seeded(Net, 1)).state_dict(), tmp)


def _compiled_in_ddp(tmp: Path) -> Path:
    return _save(nn.DataParallel(_compile(_seeded(Net, 1))).state_dict(), tmp)


def _renamed_head(tmp: Path) -> Path:
    return _save(_seeded(Net, 1).state_dict(), tmp)


def _gamma_beta(tmp: Path) -> dict[str, torch.Tensor]:
    return dict(_seeded(lambda: Block(OldNorm), 1).state_dict())


def _transposed(tmp: Path) -> Path:
    state = dict(_seeded(Net, 1).state_dict())
    state["fc.weight"] = state["fc.weight"].t().contiguous()  # as GPT-2's Conv1D stores it
    return _save(state, tmp)


def _imagenet_head(tmp: Path) -> Path:
    return _save(_seeded(lambda: Net(classes=1000), 1).state_dict(), tmp)


def _full_classifier(tmp: Path) -> Path:
    return _save(_seeded(Classifier, 1).state_dict(), tmp)


def _old_batchnorm(tmp: Path) -> Path:
    # A converter that drops the counters from a current checkpoint, whose saved module
    # versions (state_dict()._metadata, BatchNorm version 2) say they should be there: torch
    # reports them missing too. Older checkpoints (version < 2, or no versions, as in a plain
    # safetensors file) load: see test_torch_semantics.py.
    path = tmp / "old.safetensors"
    state = _seeded(Net, 1).state_dict()
    for key in [k for k in state if "num_batches" in k]:
        del state[key]  # an OrderedDict: its _metadata stays
    statevault.save(state, path)
    return path


SCENARIOS = [
    Scenario(
        "dataparallel",
        Net,
        _dataparallel,
        "wrapper_prefix",
        "Likely cause: every checkpoint key starts with 'module.': it was saved from a model "
        "wrapped in DataParallel/DistributedDataParallel",
        'Fix: statevault.load_into(model, {source}, auto_fix=False, strip_prefix="module.") '
        "(auto_fix=True, the default, does this for you; when saving, save "
        "model.module.state_dict() instead)",
        options={"auto_fix": False},
        fixed_with={"strip_prefix": "module."},
    ),
    Scenario(
        "torch.compile",
        Net,
        _compiled,
        "wrapper_prefix",
        "Likely cause: every checkpoint key starts with '_orig_mod.': it was saved from a model "
        "compiled with torch.compile",
        'Fix: statevault.load_into(model, {source}, auto_fix=False, strip_prefix="_orig_mod.") '
        "(auto_fix=True, the default, does this for you; when saving, save "
        "model._orig_mod.state_dict() instead)",
        options={"auto_fix": False},
        fixed_with={"strip_prefix": "_orig_mod."},
    ),
    Scenario(
        "compiled inside DataParallel",
        Net,
        _compiled_in_ddp,
        "wrapper_prefix",
        "Likely cause: every checkpoint key starts with 'module._orig_mod.': it was saved from a "
        "model wrapped in DataParallel/DistributedDataParallel and compiled with torch.compile",
        "Fix: statevault.load_into(model, {source}, auto_fix=False, "
        'strip_prefix="module._orig_mod.") (auto_fix=True, the default, does this for you; '
        "when saving, save model.module._orig_mod.state_dict() instead)",
        options={"auto_fix": False},
        fixed_with={"strip_prefix": "module._orig_mod."},
    ),
    Scenario(
        "renamed layer",
        RenamedNet,
        _renamed_head,
        "renamed",
        "Likely cause: renamed layer(s): 2 missing key(s) match unexpected checkpoint keys with "
        "the same shape under another name ('fc' -> 'classifier'; e.g. checkpoint 'fc.weight' "
        "is model 'classifier.weight')",
        'Fix: statevault.load_into(model, {source}, rename=[(r"^fc\\.", "classifier.")])',
        fixed_with={"rename": [(r"^fc\.", r"classifier.")]},
    ),
    Scenario(
        "gamma/beta naming",
        lambda: Block(lambda: nn.LayerNorm(16)),
        _gamma_beta,
        "renamed",
        "Likely cause: renamed layer(s): 2 missing key(s) match unexpected checkpoint keys with "
        "the same shape under another name ('gamma' -> 'weight', 'beta' -> 'bias'; e.g. "
        "checkpoint 'norm.gamma' is model 'norm.weight')",
        'Fix: statevault.load_into(model, {source}, rename=[(r"\\.gamma$", ".weight"), '
        '(r"\\.beta$", ".bias")])',
        fixed_with={"rename": [(r"\.gamma$", r".weight"), (r"\.beta$", r".bias")]},
    ),
    Scenario(
        "transposed weight",
        Net,
        _transposed,
        "transposed",
        "Likely cause: 1 weight(s) are transposed: e.g. 'fc.weight' is [8, 10] in the checkpoint "
        "and [10, 8] in the model (saved from a layer that stores in x out, such as GPT-2's "
        "Conv1D, or converted from another framework)",
        "Fix: transpose them and load the dict: state = statevault.load({source}); "
        'state.update({{"fc.weight": state["fc.weight"].t().contiguous()}}); '
        "statevault.load_into(model, state)",
    ),
    Scenario(
        "changed class count",
        Net,
        _imagenet_head,
        "first_dim",
        "Likely cause: the number of classes / output size differs: 'fc' has 1000 in the "
        "checkpoint and 10 in the model (first dimension of 2 tensor(s))",
        "Fix: statevault.load_into(model, {source}, strict=False) (to fine-tune with a new "
        "number of classes: everything else loads and these keep their current values (a fresh "
        "model's initialisation); the report lists them as skipped)",
    ),
    Scenario(
        "backbone from a full classifier",
        Net,
        _full_classifier,
        "larger_checkpoint",
        "Likely cause: the checkpoint holds a bigger model: all 9 missing model keys are in it "
        "under 'backbone.'",
        'Fix: statevault.load_into(model, {source}, prefix="backbone.") (loads just that part; '
        "the other checkpoint keys are ignored and listed in the report)",
        fixed_with={"prefix": "backbone."},
    ),
    Scenario(
        "backbone checkpoint into a full classifier",
        Classifier,
        lambda tmp: _save(_seeded(Net, 1).state_dict(), tmp),
        "smaller_checkpoint",
        "Likely cause: the checkpoint holds part of your model: all 9 unexpected checkpoint "
        "keys are your model's 'backbone.' sub-tree",
        "Fix: statevault.load_into(model.backbone, {source})",
        fixed_into=lambda model: model.backbone,
    ),
    Scenario(
        "BatchNorm num_batches_tracked missing",
        Net,
        _old_batchnorm,
        "missing_buffers",
        "Likely cause: only BatchNorm 'num_batches_tracked' counters are missing (1): the "
        "checkpoint was saved by an old PyTorch or a converter that drops them; they are only "
        "used when BatchNorm has momentum=None",
        "Fix: statevault.load_into(model, {source}, strict=False) (every other tensor loads "
        "and the counters keep their current values)",
    ),
]


@pytest.mark.parametrize("case", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_strict_names_cause_and_fix_and_touches_nothing(case: Scenario, tmp_path: Path) -> None:
    source = case.make_source(tmp_path)
    model = _seeded(case.make_model, 2)
    before = _snapshot(model)
    with pytest.raises(StateDictMismatchError) as caught:
        statevault.load_into(model, source, **case.options)
    message = str(caught.value)
    lines = message.splitlines()
    assert lines[1] == case.cause, message
    assert lines[2] == "  " + case.fix.format(source=source_code(source)), message
    assert caught.value.report.causes[0].kind == case.kind
    assert not caught.value.report.ok
    _assert_unchanged(model, before)


@pytest.mark.parametrize("case", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_non_strict_loads_what_fits_and_reports_the_rest(case: Scenario, tmp_path: Path) -> None:
    source = case.make_source(tmp_path)
    model = _seeded(case.make_model, 2)
    before = _snapshot(model)
    report = statevault.load_into(model, source, strict=False, **case.options)
    assert report.causes[0].kind == case.kind
    assert report.causes[0].summary in case.cause
    reference = source if isinstance(source, dict) else statevault.load(source)
    after = model.state_dict()
    for key in report.matched:
        assert torch.equal(after[key], reference[key]), key
    # nothing is dropped silently: every model key is matched, missing or skipped, once
    accounted = [*report.matched, *report.missing, *report.skipped]
    assert sorted(accounted) == sorted(after)
    for key in [*report.missing, *report.skipped]:
        assert torch.equal(after[key], before[key]), f"{key} should keep its value"
    assert str(report).startswith(f"Loaded {len(report.matched)} of {len(after)} model tensor(s)")


@pytest.mark.parametrize(
    "case",
    [s for s in SCENARIOS if s.fixed_with or s.fixed_into],
    ids=[s.name for s in SCENARIOS if s.fixed_with or s.fixed_into],
)
def test_the_suggested_fix_loads_cleanly(case: Scenario, tmp_path: Path) -> None:
    source = case.make_source(tmp_path)
    model = _seeded(case.make_model, 2)
    target = case.fixed_into(model) if case.fixed_into else model
    options = {**case.options, **case.fixed_with}
    report = statevault.load_into(target, source, **options)
    assert report.ok
    assert report.matched
    assert "all keys matched successfully" in str(report)


@pytest.mark.parametrize("make_source", [_dataparallel, _compiled, _compiled_in_ddp])
def test_wrapper_prefixes_are_fixed_automatically_and_reported(
    make_source: Callable[[Path], Path], tmp_path: Path
) -> None:
    path = make_source(tmp_path)
    model = _seeded(Net, 2)
    report = statevault.load_into(model, path)
    assert report.ok
    assert report.mappings and all(m.automatic for m in report.mappings)
    assert "auto_fix" in str(report)
    expected = _seeded(Net, 1).state_dict()
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, expected[key]), key


def test_a_wrapped_model_loads_a_plain_checkpoint(tmp_path: Path) -> None:
    path = _save(_seeded(Net, 1).state_dict(), tmp_path)
    wrapped = nn.DataParallel(_seeded(Net, 2))
    with pytest.raises(StateDictMismatchError) as caught:
        statevault.load_into(wrapped, path, auto_fix=False)
    assert caught.value.report.causes[0].kind == "model_wrapped"
    fix = f"statevault.load_into(model.module, {source_code(path)}, auto_fix=False)"
    assert fix in str(caught.value)
    report = statevault.load_into(wrapped, path)
    assert report.ok
    assert report.mappings[0].rule == "add 'module.' wrapper names"
    assert torch.equal(wrapped.module.fc.weight, _seeded(Net, 1).fc.weight)


def test_tied_weights_saved_without_the_duplicate_name(tmp_path: Path) -> None:
    # safetensors.torch.save_model keeps one name per shared tensor: lm_head.weight is absent
    path = tmp_path / "lm.safetensors"
    safetensors.torch.save_model(_seeded(TiedLM, 1), str(path))
    assert "lm_head.weight" not in safetensors.torch.load_file(str(path))
    model = _seeded(TiedLM, 2)
    report = statevault.load_into(model, path)  # strict: the tie fills the absent key
    assert report.ok
    assert [(t.key, t.tied_to, t.how) for t in report.tied] == [
        ("lm_head.weight", "embed.weight", "filled through tie")
    ]
    assert "lm_head.weight = embed.weight (absent from the checkpoint; filled through the tie)" in (
        str(report)
    )
    assert model.lm_head.weight is model.embed.weight
    assert torch.equal(model.embed.weight, _seeded(TiedLM, 1).embed.weight)


def test_tied_weights_kept_as_alias_by_statevault(tmp_path: Path) -> None:
    path = _save(_seeded(TiedLM, 1).state_dict(), tmp_path)
    report = statevault.load_into(_seeded(TiedLM, 2), path)
    assert report.ok
    assert [(t.key, t.how) for t in report.tied] == [("lm_head.weight", "shared")]


def test_tied_in_model_but_stored_separately_says_which_wins(tmp_path: Path) -> None:
    state = {k: v.clone() for k, v in _seeded(TiedLM, 1).state_dict().items()}
    state["lm_head.weight"] = torch.full_like(state["lm_head.weight"], 7.0)
    model = _seeded(TiedLM, 2)
    report = statevault.load_into(model, _save(state, tmp_path))
    assert [(t.key, t.how) for t in report.tied] == [("lm_head.weight", "stored separately")]
    assert "the later key's values win" in str(report)
    assert torch.equal(model.embed.weight, state["lm_head.weight"])  # torch order: later wins


def test_bf16_checkpoint_into_fp32_model_is_cast_and_reported(tmp_path: Path) -> None:
    source = _seeded(Net, 1).to(torch.bfloat16)
    path = _save(source.state_dict(), tmp_path)
    model = _seeded(Net, 2)
    report = statevault.load_into(model, path)
    floating = [k for k, v in model.state_dict().items() if v.is_floating_point()]
    assert sorted(c.key for c in report.casts) == sorted(floating)
    assert {(c.checkpoint_dtype, c.model_dtype) for c in report.casts} == {("bfloat16", "float32")}
    assert f"bfloat16 -> float32: {len(floating)} tensor(s)" in str(report)
    assert model.fc.weight.dtype == torch.float32
    assert torch.equal(model.fc.weight, source.fc.weight.float())


def test_dtype_option_converts_the_module_and_reports(tmp_path: Path) -> None:
    reference = _seeded(Net, 1)
    path = _save(reference.state_dict(), tmp_path)
    model = _seeded(Net, 2)
    report = statevault.load_into(model, path, dtype=torch.bfloat16)
    assert model.fc.weight.dtype == torch.bfloat16
    assert model.bn.num_batches_tracked.dtype == torch.int64  # only floating point converts
    assert torch.equal(model.fc.weight, reference.fc.weight.to(torch.bfloat16))
    assert {(c.checkpoint_dtype, c.model_dtype) for c in report.casts} == {("float32", "bfloat16")}
    assert "dtype=bfloat16" in str(report)


def test_changed_class_count_non_strict_skips_only_the_head(tmp_path: Path) -> None:
    path = _imagenet_head(tmp_path)
    model = _seeded(Net, 2)
    report = statevault.load_into(model, path, strict=False)
    assert report.skipped == ("fc.weight", "fc.bias")
    assert [(m.checkpoint_shape, m.model_shape) for m in report.shape_mismatches] == [
        ((1000, 8), (10, 8)),
        ((1000,), (10,)),
    ]
    assert "fc.weight: checkpoint [1000, 8] vs model [10, 8]" in str(report)
