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

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from operator import itemgetter
from typing import Any

import torch
from torch import nn

from statevault._diagnose import Cause, diagnose
from statevault._gcpause import gc_paused
from statevault._keymap import Rename, map_keys
from statevault._modelstate import ModelState, any_module, model_state
from statevault._open import Source, open_source
from statevault._reader import Reader
from statevault._report import DtypeCast, LoadReport, ShapeMismatch, TiedKey
from statevault._ties import any_repeated, identity_groups, start_addresses
from statevault.errors import StateDictMismatchError

# Overrides of _load_from_state_dict in torch itself that only migrate old checkpoints
# (BatchNorm fills num_batches_tracked for version<2 files); safe for the fast path.
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


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class _Plan:
    """The report, and what the fill needs to find each matched key's tensor and name again.

    No table per model key: the matched keys are listed again from ``model`` and ``pairs``
    (which the key mapping holds anyway) when the fill needs them.
    """

    report: LoadReport
    model: ModelState  # the module's tensors by key, as planned
    pairs: Mapping[str, str]  # mapped key -> checkpoint name (the key mapping's table)
    skipped: frozenset[str]  # model keys whose shapes differ: never read
    extra: dict[str, str]  # unexpected (mapped) key -> checkpoint name, for load hooks
    maybe_tied: bool  # two model tensors start at one address: look for ties when filling
    # model key -> the saved value of a module's non-tensor extra state (get_extra_state)
    objects: Mapping[str, Any] = field(default_factory=dict)

    def sources(self, model: ModelState) -> Iterator[tuple[str, str, torch.Tensor]]:
        """(model key, checkpoint name, tensor) for every matched key read from the file."""
        pairs, skipped = self.pairs, self.skipped
        for key, tensor in model.items():
            name = pairs.get(key)
            if name is not None and not (skipped and key in skipped):
                yield key, name, tensor

    def reads(self, model: ModelState) -> Iterator[tuple[str, torch.Tensor]]:
        """``sources`` without the keys: (checkpoint name, tensor), what the fill reads."""
        return map(itemgetter(1, 2), self.sources(model))


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
    source: Reader,
    *,
    prefix: str | None = None,
    strip_prefix: str | None = None,
    rename: Rename | None = None,
    auto_fix: bool = True,
    dtype: torch.dtype | None = None,
    dry_run: bool = False,
) -> _Plan:
    """Compare model and checkpoint names, shapes and dtypes without reading any tensor data.

    One pass over the model's tensors, keeping only what the report lists; tables keyed by
    every model key are built only when something does not match or may be tied.
    """
    model = model_state(module)
    names = source.names()
    keymap = map_keys(
        names,
        model.keys(),
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
    addresses = start_addresses()
    found = 0  # model keys the checkpoint has
    objects: dict[str, Any] = {}
    for key, dest in model.items():
        if not isinstance(dest, torch.Tensor):  # a module's extra state, e.g. a dict
            if key in pairs:  # saved as one tensor: torch hands that to set_extra_state
                found += 1
                matched.append(key)
                continue
            saved, value = source.stored_object(key)
            (matched if saved else missing).append(key)
            if saved:
                objects[key] = value
            continue
        if dest.numel():
            addresses.append(dest.data_ptr())
        name = pairs.get(key)
        if name is None:
            missing.append(key)
            continue
        found += 1
        shape, stored_dtype = source.signature(name)
        if tuple(dest.shape) != shape:
            mismatches.append(ShapeMismatch(key, shape, tuple(dest.shape)))
            continue
        if name == key:
            # the checkpoint's own string: it is alive anyway, so the report holds no new
            # string per key (1.3 MiB of fresh keys for 20,000 tensors otherwise)
            key = name
        matched.append(key)
        target = dtype if dtype is not None and dest.is_floating_point() else dest.dtype
        if stored_dtype != target:
            casts.append(DtypeCast(key, _dtype_name(stored_dtype), _dtype_name(target)))
    skipped = frozenset(m.key for m in mismatches)
    maybe_tied = any_repeated(addresses)
    del addresses
    tied: list[TiedKey] = []
    if maybe_tied:
        by_key = dict(model.items())
        sources = {k: pairs[k] for k in by_key if k in pairs and k not in skipped}
        tied = _ties(by_key, set(matched), missing, sources, source.aliases)
    matched += [t.key for t in tied if t.how == "filled through tie"]
    extra: dict[str, str] = {}
    if found < len(pairs):  # some checkpoint key matched no model key
        model_keys = set(model.keys())
        inside = tuple(f"{key}." for key in objects)  # tensors stored inside extra state
        extra = {
            k: n
            for k, n in pairs.items()
            if k not in model_keys and not (inside and k.startswith(inside))
        }
    causes: tuple[Cause, ...] = ()
    if missing or extra or mismatches:
        by_key = dict(model.items())
        buffers = {name for name, _ in module.named_buffers()}
        causes = diagnose(
            model_keys=list(by_key),
            checkpoint_keys=list(pairs),
            missing={k: tuple(getattr(by_key[k], "shape", ())) for k in missing},
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
    return _Plan(report, model, pairs, skipped, extra, maybe_tied, objects)


def _fill_fast(
    model: ModelState,
    planned: _Plan,
    source: Reader,
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


def _fill_with_torch(module: nn.Module, planned: _Plan, source: Reader, verify: bool) -> LoadReport:
    """Let torch load (so custom hooks run), then report in the same terms as the fast path."""
    report = planned.report
    wanted = {
        **{key: name for key, name, _ in planned.sources(planned.model)},
        **planned.extra,
    }  # mismatched shapes are left out, as on the fast path
    read = source.read(list(dict.fromkeys(wanted.values())), verify=verify)
    state = {key: read[name] for key, name in wanted.items()}
    state.update(planned.objects)
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
    """Load a checkpoint (any file or folder :func:`open_checkpoint` takes, or a state dict)
    into ``module``; a training folder gives its model weights.

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
    opened, owned = open_source(source)
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
        # module.to(dtype) replaces buffer objects, so only then is a planned state_dict()
        # stale (a walk lists the module as it is); otherwise it would be built a second time.
        model = planned.model if dtype is None else model_state(module)
        _fill_fast(model, planned, opened, verify)
        return report
    finally:
        if owned:
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
