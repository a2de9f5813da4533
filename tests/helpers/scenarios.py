"""Builders for the corpus of real-world checkpoint/model mismatches: each names its exact cause and fix.

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

import torch
from torch import nn

import statevault


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


def seeded(factory: Callable[[], nn.Module], seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return factory()


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_unchanged(module: nn.Module, before: dict[str, torch.Tensor]) -> None:
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


def save_state(state: dict[str, torch.Tensor], tmp: Path) -> Path:
    path = tmp / "ckpt.safetensors"
    statevault.save(state, path)
    return path


def dataparallel(tmp: Path) -> Path:
    return save_state(nn.DataParallel(seeded(Net, 1)).state_dict(), tmp)


def compiled_module(module: nn.Module) -> nn.Module:
    """torch.compile's wrapper (never run, so nothing is compiled): its keys gain _orig_mod."""
    with warnings.catch_warnings():  # torch's own import-time deprecations, not ours
        warnings.simplefilter("ignore", DeprecationWarning)
        compiled = torch.compile(module)
    assert isinstance(compiled, nn.Module)
    return compiled


def compiled(tmp: Path) -> Path:
    return save_state(compiled_module(seeded(Net, 1)).state_dict(), tmp)


def compiled_in_ddp(tmp: Path) -> Path:
    return save_state(nn.DataParallel(compiled_module(seeded(Net, 1))).state_dict(), tmp)


def renamed_head(tmp: Path) -> Path:
    return save_state(seeded(Net, 1).state_dict(), tmp)


def gamma_beta(tmp: Path) -> dict[str, torch.Tensor]:
    return dict(seeded(lambda: Block(OldNorm), 1).state_dict())


def transposed(tmp: Path) -> Path:
    state = dict(seeded(Net, 1).state_dict())
    state["fc.weight"] = state["fc.weight"].t().contiguous()  # as GPT-2's Conv1D stores it
    return save_state(state, tmp)


def imagenet_head(tmp: Path) -> Path:
    return save_state(seeded(lambda: Net(classes=1000), 1).state_dict(), tmp)


def full_classifier(tmp: Path) -> Path:
    return save_state(seeded(Classifier, 1).state_dict(), tmp)


def old_batchnorm(tmp: Path) -> Path:
    # A converter that drops the counters from a current checkpoint, whose saved module
    # versions (state_dict()._metadata, BatchNorm version 2) say they should be there: torch
    # reports them missing too. Older checkpoints (version < 2, or no versions, as in a plain
    # safetensors file) load: see test_torch_semantics.py.
    path = tmp / "old.safetensors"
    state = seeded(Net, 1).state_dict()
    for key in [k for k in state if "num_batches" in k]:
        del state[key]  # an OrderedDict: its _metadata stays
    statevault.save(state, path)
    return path


SCENARIOS = [
    Scenario(
        "dataparallel",
        Net,
        dataparallel,
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
        compiled,
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
        compiled_in_ddp,
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
        renamed_head,
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
        gamma_beta,
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
        transposed,
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
        imagenet_head,
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
        full_classifier,
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
        lambda tmp: save_state(seeded(Net, 1).state_dict(), tmp),
        "smaller_checkpoint",
        "Likely cause: the checkpoint holds part of your model: all 9 unexpected checkpoint "
        "keys are your model's 'backbone.' sub-tree",
        "Fix: statevault.load_into(model.backbone, {source})",
        fixed_into=lambda model: model.backbone,
    ),
    Scenario(
        "BatchNorm num_batches_tracked missing",
        Net,
        old_batchnorm,
        "missing_buffers",
        "Likely cause: only BatchNorm 'num_batches_tracked' counters are missing (1): the "
        "checkpoint was saved by an old PyTorch or a converter that drops them; they are only "
        "used when BatchNorm has momentum=None",
        "Fix: statevault.load_into(model, {source}, strict=False) (every other tensor loads "
        "and the counters keep their current values)",
    ),
]
