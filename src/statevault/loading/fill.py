"""Execute a load plan: write the planned tensors into the module, one of two ways.

The fast path (``fill_in_place``) reads every matched tensor straight from the file into the
module's own memory, each distinct piece of memory once, with no per-key Python filtering.
Modules that change how state is loaded (load_state_dict hooks, an overridden
``_load_from_state_dict``, extra state), tensor-subclass parameters and ``assign=True`` go
through ``module.load_state_dict`` itself (``fill_with_torch``), so they behave as torch
defines it; the report is brought in line with what torch did. ``torch_load_reason`` says
which path a plan takes.

May import: ``loading.plan``, ``loading.module_state``, ``loading.state_dict_load``,
``readers``, ``engine``, ``fileformat``, ``reports``. Imported by ``loading.load_into``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from torch import nn

from statevault.engine.ties import identity_groups
from statevault.fileformat.dtypes import dtype_from_name
from statevault.loading.module_state import ModelState, any_module
from statevault.loading.plan import LoadPlan
from statevault.loading.state_dict_load import load_state_dict as torch_load_state_dict
from statevault.readers.base import Checkpoint
from statevault.reports.load_entries import TieStatus
from statevault.reports.load_report import LoadReport

# Overrides of _load_from_state_dict in torch itself that only migrate old checkpoints
# (BatchNorm fills num_batches_tracked for version<2 files): the fast path loads exactly what
# they would when every key matched, and the plan applies their one upgrade when a key is
# missing (see loading.plan.upgraded_counters).
_BENIGN_OVERRIDES = frozenset({"torch.nn.modules.batchnorm"})


def _class_loads_its_way(cls: type[nn.Module]) -> bool:
    override = cls._load_from_state_dict
    default = nn.Module
    return (
        override is not default._load_from_state_dict
        and override.__module__ not in _BENIGN_OVERRIDES
    ) or (  # extra state: torch hands it to set_extra_state, which only it knows to call
        getattr(cls, "get_extra_state", default.get_extra_state) is not default.get_extra_state
        or getattr(cls, "set_extra_state", default.set_extra_state) is not default.set_extra_state
    )


def has_custom_loading(module: nn.Module) -> bool:
    """True when some submodule changes how state is loaded, so torch must do it."""
    return any_module(
        module,
        instance=lambda sub: bool(
            sub._load_state_dict_pre_hooks or sub._load_state_dict_post_hooks
        ),
        by_class=_class_loads_its_way,
    )


def torch_load_reason(module: nn.Module, planned: LoadPlan, assign: bool) -> str | None:
    """Why this load must go through ``module.load_state_dict``, or None for the fast path."""
    if assign:
        return "assign=True"
    if planned.subclassed:
        return "tensor-subclass parameters found"
    if has_custom_loading(module):
        return "custom load hooks found"
    return None


def fill_in_place(
    model: ModelState,
    planned: LoadPlan,
    source: Checkpoint,
    verify: bool,
) -> None:
    """Fill matched keys in place; each distinct piece of memory is written once.

    The model's tensors are read into as they are, not detached: a detached alias and a
    table of them cost ~150 bytes per tensor (3 MiB for 20,000), and reads write raw memory.
    When the plan saw no two tensors start at one address, nothing is tied (``module.to``
    can only untie) and the matched tensors stream straight from the model to the reads.
    """
    if not planned.maybe_tied:
        # no casts planned: every destination has its stored dtype (dtype= included)
        source.fill(planned.reads(model), verify=verify, dtypes_match=not planned.report.casts)
        return
    model_state = {key: tensor for key, _, tensor in planned.sources(model)}
    sources = {key: name for key, name, _ in planned.sources(model)}
    groups = identity_groups((key, model_state[key]) for key in sources)
    leader = {key: keys[0] for keys in groups for key in keys[1:]}
    # tied in the model, separate in the file: torch's order (the later key wins)
    later = [
        (name, model_state[key])
        for key, name in sources.items()
        if key in leader
        and source.aliases.get(sources[leader[key]], sources[leader[key]])
        != source.aliases.get(name, name)
    ]
    first = ((name, model_state[key]) for key, name in sources.items() if key not in leader)
    source.fill(first, verify=verify)
    source.fill(later, verify=verify)


def _by_model_names(versions: Mapping[str, Any], planned: LoadPlan) -> dict[str, Any]:
    """The saved version table keyed by the model's module names, as torch looks it up.

    Copies (torch writes ``assign`` into the entries); a module whose keys were renamed
    (``prefix=``, ``auto_fix``, ...) gets the entry saved under its name in the checkpoint.
    """
    table = {k: dict(v) for k, v in versions.items() if isinstance(v, Mapping)}
    for key, name in (*planned.pairs.items(), *planned.extra.items()):
        module, saved = key.rpartition(".")[0], name.rpartition(".")[0]
        entry = versions.get(saved) if module != saved else None
        if isinstance(entry, Mapping):
            table[module] = dict(entry)
    return table


def fill_with_torch(
    module: nn.Module,
    planned: LoadPlan,
    source: Checkpoint,
    verify: bool,
    assign: bool,
    why: str,
    *,
    mapped: bool = False,
) -> LoadReport:
    """Let torch load (hooks, overrides, version upgrades, subclasses, ``assign``), then
    report in the same terms as the fast path.

    Tensors are read into fresh memory (``assign=True`` makes them the module's own). The
    state dict carries the saved ``_metadata`` (a copy: torch writes ``assign`` into it), so
    each module's ``_load_from_state_dict`` gets its own ``local_metadata``. ``mapped``
    (``mmap=True``): the tensors are views of the file's mapping, cast to the model's dtype
    where it differs, and assigned.
    """
    report = planned.report
    wanted = {
        **{key: name for key, name, _ in planned.sources(planned.model)},
        **planned.extra,
    }  # mismatched shapes are left out, as on the fast path
    names = list(dict.fromkeys(wanted.values()))
    read = source.mapped(names, verify=verify) if mapped else source.read(names, verify=verify)
    state: OrderedDict[str, Any] = OrderedDict((key, read[name]) for key, name in wanted.items())
    del read
    if mapped:
        assign = True  # the module's tensors become the mapped ones
        for cast in report.casts:  # the module keeps its dtype, as bind_mapped does
            target = dtype_from_name(cast.model_dtype)
            if cast.key in state and target is not None:
                state[cast.key] = state[cast.key].to(target)
    state.update(planned.objects)
    versions = source.torch_versions()
    if versions is not None:
        state._metadata = _by_model_names(versions, planned)  # type: ignore[attr-defined]
    result = torch_load_state_dict(module, state, assign=assign)
    del state
    expected_absent = {*report.skipped, *report.not_requested}
    if not assign:  # assigned tensors replace one side of a tie; the other is not filled
        expected_absent |= {t.key for t in report.tied if t.how is TieStatus.FILLED_THROUGH_TIE}
    missing = [k for k in result.missing_keys if k not in expected_absent]
    missing_set = set(missing)
    unexpected = list(result.unexpected_keys)
    # the plan's diagnosis explains the plan's keys: kept only while torch agrees on them
    same_keys = missing == report.missing_keys and unexpected == report.unexpected_keys
    return replace(
        report,
        matched=tuple(k for k in report.matched if k not in missing_set),
        missing_keys=missing,
        unexpected_keys=unexpected,
        causes=report.causes if same_keys else (),
        notes=(*report.notes, f"{why}: loaded through module.load_state_dict"),
    )
