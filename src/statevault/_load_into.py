"""load_into(): fill an existing module from a checkpoint, explaining any mismatch.

The order is fixed: map the checkpoint's names (``_keymap``), compare names, shapes and dtypes
with the model using the header only, diagnose (``_diagnose``), and raise when strict, all
before a single weight is touched or a byte of tensor data is read. Then one of two fill paths,
with the same report. Modules without custom load hooks take the fast path: every parameter and
persistent buffer is filled in place, straight from the file, with no per-key Python
filtering. Modules that customise loading (load_state_dict pre/post hooks, an overridden
``_load_from_state_dict``) go through ``module.load_state_dict`` itself so their hooks run as
torch would run them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch
from torch import nn

from statevault._diagnose import Cause, diagnose
from statevault._gcpause import gc_paused
from statevault._keymap import Rename, map_keys
from statevault._report import DtypeCast, LoadReport, ShapeMismatch, TiedKey
from statevault._sources import FileSource, MemorySource, Source, open_source
from statevault._ties import identity_groups
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


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class _Plan:
    report: LoadReport
    model_state: Mapping[str, torch.Tensor]  # module.state_dict(keep_vars=True) as planned
    sources: dict[str, str]  # model key -> checkpoint name, for every matched key read from file
    extra: dict[str, str]  # unexpected (mapped) key -> checkpoint name, for load hooks


def _ties(
    model_state: Mapping[str, torch.Tensor],
    matched: set[str],
    missing: list[str],
    sources: Mapping[str, str],
    aliases: Mapping[str, str],
) -> list[TiedKey]:
    """Notes on tied model tensors; moves missing keys that a tie fills out of ``missing``."""
    notes = []
    filled = set()
    missing_set = set(missing)
    for keys in identity_groups(model_state.items()):
        loaded = [k for k in keys if k in matched]
        if not loaded:
            continue
        stored = {aliases.get(sources[k], sources[k]) for k in loaded}
        for key in keys:
            if key == loaded[0]:
                continue
            if key in missing_set:
                filled.add(key)
                notes.append(TiedKey(key, loaded[0], "filled through tie"))
            elif key in matched:
                how = "shared" if len(stored) == 1 else "stored separately"
                notes.append(TiedKey(key, loaded[0], how))
    if filled:
        missing[:] = [k for k in missing if k not in filled]
    return notes


def plan(
    module: nn.Module,
    source: FileSource | MemorySource,
    *,
    prefix: str | None = None,
    strip_prefix: str | None = None,
    rename: Rename | None = None,
    auto_fix: bool = True,
    dtype: torch.dtype | None = None,
    dry_run: bool = False,
) -> _Plan:
    """Compare model and checkpoint names, shapes and dtypes without reading any tensor data."""
    model_state = module.state_dict(keep_vars=True)
    names = source.names()
    keymap = map_keys(
        names,
        model_state.keys(),
        prefix=prefix,
        strip_prefix=strip_prefix,
        rename=rename,
        auto_fix=auto_fix,
    )
    pairs = keymap.pairs
    matched: list[str] = []
    missing: list[str] = []
    mismatches: list[ShapeMismatch] = []
    casts: list[DtypeCast] = []
    sources: dict[str, str] = {}
    for key, dest in model_state.items():
        name = pairs.get(key)
        if name is None:
            missing.append(key)
            continue
        shape, stored_dtype = source.signature(name)
        if tuple(dest.shape) != shape:
            mismatches.append(ShapeMismatch(key, shape, tuple(dest.shape)))
            continue
        matched.append(key)
        sources[key] = name
        target = dtype if dtype is not None and dest.is_floating_point() else dest.dtype
        if stored_dtype != target:
            casts.append(DtypeCast(key, _dtype_name(stored_dtype), _dtype_name(target)))
    matched_set = set(matched)
    tied = _ties(model_state, matched_set, missing, sources, source.aliases)
    matched += [t.key for t in tied if t.how == "filled through tie"]
    extra = {k: n for k, n in pairs.items() if k not in model_state}
    causes: tuple[Cause, ...] = ()
    if missing or extra or mismatches:
        buffers = {name for name, _ in module.named_buffers()}
        causes = diagnose(
            model_keys=list(model_state),
            checkpoint_keys=list(pairs),
            missing={k: tuple(model_state[k].shape) for k in missing},
            unexpected={k: source.signature(n)[0] for k, n in extra.items()},
            mismatches=[(m.key, m.checkpoint_shape, m.model_shape) for m in mismatches],
            buffers=buffers,
            prefix=prefix,
            ignored=keymap.ignored,
        )
    notes = list(keymap.notes)
    if dtype is not None:
        notes.append(f"dtype={_dtype_name(dtype)}: floating-point tensors are stored as that")
    report = LoadReport(
        source=source.label,
        target=type(module).__name__,
        matched=tuple(matched),
        missing=tuple(missing),
        unexpected=tuple(extra),
        shape_mismatches=tuple(mismatches),
        casts=tuple(casts),
        tied=tuple(tied),
        mappings=keymap.applied,
        ignored=keymap.ignored,
        causes=causes,
        notes=tuple(notes),
        dry_run=dry_run,
    )
    return _Plan(report, model_state, sources, extra)


def _fill_fast(
    model_state: Mapping[str, torch.Tensor],
    planned: _Plan,
    source: FileSource | MemorySource,
    verify: bool,
) -> None:
    """Fill matched keys in place; each distinct piece of memory is written once.

    The model's tensors are read into as they are, not detached: a detached alias and a
    table of them cost ~150 bytes per tensor (3 MiB for 20,000), and reads write raw memory.
    """
    sources = planned.sources
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


def _fill_with_torch(
    module: nn.Module, planned: _Plan, source: FileSource | MemorySource, verify: bool
) -> LoadReport:
    """Let torch load (so custom hooks run), then report in the same terms as the fast path."""
    report = planned.report
    wanted = {
        **planned.sources,
        **planned.extra,
    }  # mismatched shapes are left out, as on the fast path
    read = source.tensors(list(dict.fromkeys(wanted.values())), verify=verify)
    state = {key: read[name] for key, name in wanted.items()}
    result = module.load_state_dict(state, strict=False)
    expected_absent = set(report.skipped) | {
        t.key for t in report.tied if t.how == "filled through tie"
    }
    missing = tuple(k for k in result.missing_keys if k not in expected_absent)
    missing_set = set(missing)
    return replace(
        report,
        matched=tuple(k for k in report.matched if k not in missing_set),
        missing=missing,
        unexpected=tuple(result.unexpected_keys),
        notes=(*report.notes, "custom load hooks found: loaded through module.load_state_dict"),
    )


@gc_paused  # many-small-tensor loads: see _gcpause
def load_into(
    module: nn.Module,
    source: Source,
    *,
    strict: bool = True,
    verify: bool = True,
    prefix: str | None = None,
    strip_prefix: str | None = None,
    rename: Rename | None = None,
    auto_fix: bool = True,
    dtype: torch.dtype | None = None,
    dry_run: bool = False,
) -> LoadReport:
    """Load a checkpoint (a statevault or safetensors file, or a state dict) into ``module``.

    Returns a :class:`LoadReport`. With ``strict=True`` any missing, unexpected or
    shape-mismatched key raises one :class:`StateDictMismatchError` naming the likely cause and
    the fix, *before* any weight is touched. With ``strict=False`` everything that fits is
    loaded, tensors whose shapes differ are skipped, and the report lists both.

    Names: ``auto_fix`` removes wrapper prefixes (``module.``, ``_orig_mod.``, ...) when that is
    unambiguous; ``prefix="backbone."`` loads only that sub-tree of the checkpoint (the other
    keys are ignored, not unexpected); ``strip_prefix`` removes a prefix from the keys that have
    it; ``rename`` is ``[(regex, replacement), ...]`` or a callable. ``dtype`` converts the
    module's floating-point tensors to that dtype and loads into them. ``dry_run`` only reports
    (strict still raises); ``verify`` checks tensor checksums while reading.

    Example::

        report = statevault.load_into(model, "model.safetensors")
        print(report)  # Loaded 2 of 2 model tensor(s) from ...: all keys matched successfully
    """
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype= must be a floating-point torch.dtype, got {dtype!r}")
    opened = open_source(source)
    try:
        planned = plan(
            module,
            opened,
            prefix=prefix,
            strip_prefix=strip_prefix,
            rename=rename,
            auto_fix=auto_fix,
            dtype=dtype,
            dry_run=dry_run,
        )
        report = planned.report
        if strict and not report.ok:
            raise StateDictMismatchError(report.error_message(), report)
        custom = has_custom_loading(module)
        if dry_run:
            if custom:
                note = "dry run: custom load hooks were not run; they may change the outcome"
                return replace(report, notes=(*report.notes, note))
            return report
        if dtype is not None:
            module.to(dtype)  # floating-point tensors only; ties survive (same Parameter)
        if custom:
            report = _fill_with_torch(module, planned, opened, verify)
            if strict and not report.ok:  # a hook changed the keys: torch would raise too
                raise StateDictMismatchError(report.error_message(), report)
            return report
        # module.to(dtype) replaces buffer objects, so only then is the planned table stale;
        # otherwise rebuilding state_dict() would walk every module a second time.
        model_state = planned.model_state if dtype is None else module.state_dict(keep_vars=True)
        _fill_fast(model_state, planned, opened, verify)
        return report
    finally:
        opened.close()


def check(
    module: nn.Module,
    source: Source,
    *,
    prefix: str | None = None,
    strip_prefix: str | None = None,
    rename: Rename | None = None,
    auto_fix: bool = True,
    dtype: torch.dtype | None = None,
) -> LoadReport:
    """What :func:`load_into` would do, without touching the module or reading tensor data.

    Never raises on a mismatch: the report's ``ok``, ``causes`` and ``str()`` say what differs.

    Example::

        report = statevault.check(model, "ckpt.safetensors")
        if not report.ok:
            print(report)
    """
    return load_into(
        module,
        source,
        strict=False,
        prefix=prefix,
        strip_prefix=strip_prefix,
        rename=rename,
        auto_fix=auto_fix,
        dtype=dtype,
        dry_run=True,
    )
