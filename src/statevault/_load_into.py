"""load_into(): fill an existing module from a checkpoint with load_state_dict semantics.

Two paths, same results. Modules without custom load hooks take the fast path: every
parameter and persistent buffer is filled in place, straight from the file, with no
per-key Python filtering. Modules that customise loading (load_state_dict pre/post hooks,
an overridden ``_load_from_state_dict``) go through ``module.load_state_dict`` itself so
their hooks run as torch would run them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from statevault._gcpause import gc_paused
from statevault._report import DtypeCast, LoadReport, ShapeMismatch
from statevault._sources import FileSource, MemorySource, Source, open_source
from statevault.errors import StateDictMismatchError

# Overrides of _load_from_state_dict in torch itself that only migrate old checkpoints
# (BatchNorm fills num_batches_tracked for version<2 files); safe for the fast path.
_BENIGN_OVERRIDES = frozenset({"torch.nn.modules.batchnorm"})


def has_custom_loading(module: nn.Module) -> bool:
    """True when some submodule changes how state is loaded, so torch must do it."""
    default = nn.Module._load_from_state_dict
    for sub in module.modules():
        if sub._load_state_dict_pre_hooks or sub._load_state_dict_post_hooks:
            return True
        override = type(sub)._load_from_state_dict
        if override is not default and override.__module__ not in _BENIGN_OVERRIDES:
            return True
    return False


def _identity(tensor: torch.Tensor) -> tuple[Any, ...]:
    return (tensor.device, tensor.data_ptr(), tuple(tensor.shape), tensor.stride(), tensor.dtype)


def _analyse(
    model_state: Mapping[str, torch.Tensor], source: FileSource | MemorySource
) -> LoadReport:
    """Compare model and checkpoint keys, shapes and dtypes without reading any data."""
    names = source.names()
    in_source = set(names)
    matched, missing, mismatches, casts = [], [], [], []
    for key, dest in model_state.items():
        if key not in in_source:
            missing.append(key)
            continue
        shape, dtype = source.signature(key)
        if tuple(dest.shape) != shape:
            mismatches.append(ShapeMismatch(key, shape, tuple(dest.shape)))
            continue
        matched.append(key)
        if dtype != dest.dtype:
            casts.append(
                DtypeCast(
                    key, str(dtype).removeprefix("torch."), str(dest.dtype).removeprefix("torch.")
                )
            )
    unexpected = [n for n in names if n not in model_state]
    first_owner: dict[tuple[Any, ...], str] = {}
    tied = []
    for key, dest in model_state.items():
        if dest.numel() == 0:
            continue
        owner = first_owner.setdefault(_identity(dest), key)
        if owner != key:
            tied.append((key, owner))
    return LoadReport(
        source=source.label,
        matched=tuple(matched),
        missing=tuple(missing),
        unexpected=tuple(unexpected),
        shape_mismatches=tuple(mismatches),
        casts=tuple(casts),
        tied=tuple(tied),
    )


def _fill_fast(
    model_state: Mapping[str, torch.Tensor],
    report: LoadReport,
    source: FileSource | MemorySource,
    verify: bool,
) -> None:
    """Fill matched keys in place; each distinct piece of memory is written once."""
    claimed: dict[tuple[Any, ...], str] = {}
    first: list[tuple[str, torch.Tensor]] = []
    later: list[tuple[str, torch.Tensor]] = []
    for key in report.matched:
        dest = model_state[key].detach()
        ident = _identity(dest)
        stored = source.aliases.get(key, key)
        if dest.numel() and ident in claimed:
            if claimed[ident] != stored:  # tied in the model, separate in the file: torch order
                later.append((key, dest))
            continue
        claimed[ident] = stored
        first.append((key, dest))
    source.fill(first, verify=verify)
    source.fill(later, verify=verify)


def _fill_with_torch(
    module: nn.Module, report: LoadReport, source: FileSource | MemorySource, verify: bool
) -> LoadReport:
    skip = {m.key for m in report.shape_mismatches}
    names = [n for n in source.names() if n not in skip]
    state = source.tensors(names, verify=verify)
    result = module.load_state_dict(state, strict=False)
    missing = tuple(k for k in result.missing_keys if k not in skip)
    matched = tuple(k for k in report.matched if k not in set(missing))
    return LoadReport(
        source=report.source,
        matched=matched,
        missing=missing,
        unexpected=tuple(result.unexpected_keys),
        shape_mismatches=report.shape_mismatches,
        casts=report.casts,
        tied=report.tied,
        notes=(*report.notes, "custom load hooks found: loaded through module.load_state_dict"),
    )


@gc_paused  # many-small-tensor loads: see _gcpause
def load_into(
    module: nn.Module, source: Source, *, strict: bool = True, verify: bool = True
) -> LoadReport:
    """Load a checkpoint file (or an in-memory state dict) into ``module``; return a report.

    With ``strict=True`` any missing, unexpected or shape-mismatched key raises
    :class:`StateDictMismatchError` *before* any weight is touched. With ``strict=False``
    everything that matches is loaded, mismatched tensors are skipped, and the report says
    so. ``verify`` checks tensor checksums while reading.

    Example::

        model = Model(input_feat=6)
        report = statevault.load_into(model, "model.safetensors")
        print(report)  # Loaded 2 tensor(s) from model.safetensors: all keys matched successfully
    """
    opened = open_source(source)
    try:
        model_state = module.state_dict(keep_vars=True)
        report = _analyse(model_state, opened)
        if strict and not report.ok:
            name = type(module).__name__
            lines = [f"Cannot load {opened.label} into {name}:", *report.problem_lines()]
            lines.append("Pass strict=False to load the tensors that do match and skip the rest.")
            raise StateDictMismatchError("\n".join(lines), report)
        if has_custom_loading(module):
            return _fill_with_torch(module, report, opened, verify)
        _fill_fast(model_state, report, opened, verify)
        return report
    finally:
        opened.close()
