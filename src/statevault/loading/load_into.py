"""load_into(): fill an existing module from a checkpoint, explaining any mismatch.

The order is fixed: map the checkpoint's names (``_keymap``), compare names, shapes and dtypes
with the model using the header only, diagnose (``_diagnose``), and raise when strict, all
before a single weight is touched or a byte of tensor data is read. Then one of two fill paths,
with the same report. Modules without custom load hooks take the fast path: every parameter and
persistent buffer is filled in place, straight from the file, with no per-key Python
filtering (torch's own BatchNorm version upgrade is applied there, in the plan: see
``_upgraded_counters``). Everything else goes through ``module.load_state_dict`` itself, so it
behaves as torch defines it: modules that customise loading (load_state_dict pre/post hooks,
an overridden ``_load_from_state_dict`` with the saved ``_metadata`` as its
``local_metadata``, extra state), tensor-subclass parameters (no plain memory to read into)
and ``assign=True``. There missing and unexpected keys get torch's strict verdict, after its
hooks ran: a post-hook may forgive keys.
"""

from __future__ import annotations

import ast
import os
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from operator import itemgetter
from typing import Any

import torch
from torch import nn

from statevault.engine.ties import any_repeated, identity_groups, start_addresses
from statevault.errors import MetaDeviceError, StateDictMismatchError, UnsupportedObjectError
from statevault.loading.diagnose import Call, Cause, diagnose, literal
from statevault.loading.keymap import Rename, map_keys
from statevault.loading.module_state import ModelState, any_module, model_state
from statevault.loading.state_dict_load import load_state_dict as torch_load_state_dict
from statevault.readers.base import Reader
from statevault.readers.dispatch import Source, open_source
from statevault.readers.safetensors_file import Checkpoint
from statevault.reports.load_report import DtypeCast, LoadReport, ShapeMismatch, TiedKey, capped

# Overrides of _load_from_state_dict in torch itself that only migrate old checkpoints
# (BatchNorm fills num_batches_tracked for version<2 files): the fast path loads exactly what
# they would when every key matched, and the plan applies their one upgrade when a key is
# missing (see _upgraded_counters).
_BENIGN_OVERRIDES = frozenset({"torch.nn.modules.batchnorm"})
# Tensors the fast path reads into raw memory; any other type (a wrapper subclass such as
# DTensor, a lazy parameter) is loaded the way torch loads it (copy_ or swap_tensors).
_PLAIN_TENSOR_TYPES = (torch.Tensor, nn.Parameter)


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


_COUNTER = "num_batches_tracked"


def _upgraded_counters(
    module: nn.Module, missing: list[str], source: Reader, pairs: Mapping[str, str]
) -> list[str]:
    """Missing BatchNorm counters that torch's version upgrade fills, as it fills them.

    ``_NormBase._load_from_state_dict`` (torch's only such override the fast path takes)
    treats a checkpoint whose saved version of that module is absent or below 2 (torch <
    0.4.1) as predating the counter, and loads the module's own value into it: the counter
    keeps its value. The version is looked up under the checkpoint's name of that module.
    A module the checkpoint has nothing of is missing, counter included (torch's upgrade
    would "fill" that counter from the module itself and report only the others).
    """
    found: list[str] = []
    versions: dict[str, Any] | None = None
    for key in missing:
        path, _, leaf = key.rpartition(".")
        if leaf != _COUNTER:
            continue
        try:
            owner = module.get_submodule(path)
        except AttributeError:
            continue
        if not (isinstance(owner, nn.modules.batchnorm._NormBase) and owner.track_running_stats):
            continue
        if versions is None:
            versions = source.torch_versions() or {}
        prefix = f"{path}." if path else ""
        sibling = pairs.get(f"{prefix}running_mean")  # the module's name in the checkpoint
        if sibling is None:  # nothing of this module is in the checkpoint: it is missing
            continue
        entry = versions.get(sibling[: -len("running_mean") - 1])
        version = entry.get("version") if isinstance(entry, Mapping) else None
        if version is None or (isinstance(version, int) and version < 2):
            found.append(key)
    return found


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
    on_meta: bool  # some model tensor is on the meta device: there is nothing to fill
    # model key -> the saved value of a module's non-tensor extra state (get_extra_state)
    objects: Mapping[str, Any] = field(default_factory=dict)
    subclassed: bool = False  # some model tensor is not a plain Tensor/Parameter

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
    call: Call | None = None,
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
    subclassed = False
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
        if type(dest) not in _PLAIN_TENSOR_TYPES:  # no plain memory: data_ptr() may be 0
            subclassed = True
        elif dest.numel():
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
    upgraded: list[str] = []
    if missing:
        _refuse_non_tensors(source, missing, type(module).__name__)
        upgraded = _upgraded_counters(module, missing, source, pairs)
        if upgraded:
            filled = set(upgraded)
            missing = [k for k in missing if k not in filled]
            matched += upgraded
    skipped = frozenset(m.key for m in mismatches)
    maybe_tied = any_repeated(addresses)
    # only a meta tensor with elements has address 0 (asked of torch: ``0 in addresses``
    # compares one Python int per tensor, 0.66 ms for 20,000; this takes ~0.02 ms)
    on_meta = bool(addresses) and bool(torch.frombuffer(addresses, dtype=torch.int64).eq(0).any())
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
            non_persistent=buffers.difference(by_key),
            prefix=prefix,
            ignored=keymap.ignored,
            optimizer=_holds_optimizer_state(source, pairs),
            stored={m.key: pairs[m.key] for m in mismatches},
            call=call,
        )
    notes = list(keymap.notes)
    if upgraded:
        notes.append(
            f"{len(upgraded)} BatchNorm counter(s) ({', '.join(capped(upgraded, 3))}) are absent "
            "from a checkpoint that predates them (module version < 2): they keep their "
            "values, as torch's version upgrade does"
        )
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
    return _Plan(report, model, pairs, skipped, extra, maybe_tied, on_meta, objects, subclassed)


def _refuse_non_tensors(source: Reader, missing: list[str], target: str) -> None:
    """A saved value that is not a tensor under a tensor's key is an error, not a gap.

    torch's load_state_dict refuses it too ("expected torch.Tensor ... but received"),
    strict or not; reporting the key as missing would hide what the file holds.
    """
    for key in missing:
        saved, value = source.stored_object(key)
        if saved:
            raise UnsupportedObjectError(
                f"{source.label}: '{key}' holds a {type(value).__name__} "
                f"({_short(value)}), but '{key}' of {target} is a tensor: expected a "
                "tensor there. Save the tensor itself under that key"
            )


def _short(value: object) -> str:
    """A short form of a stored value for an error message."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _holds_optimizer_state(source: Reader, pairs: Mapping[str, str]) -> bool:
    """True when the saved state is an optimizer's state_dict ('state' and 'param_groups')."""
    if pairs and not all(name.startswith("state.") for name in pairs.values()):
        return False
    return source.stored_object("param_groups")[0]


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


def _by_model_names(versions: Mapping[str, Any], planned: _Plan) -> dict[str, Any]:
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


def _fill_with_torch(
    module: nn.Module, planned: _Plan, source: Reader, verify: bool, assign: bool, why: str
) -> LoadReport:
    """Let torch load (hooks, overrides, version upgrades, subclasses, ``assign``), then
    report in the same terms as the fast path.

    Tensors are read into fresh memory (``assign=True`` makes them the module's own). The
    state dict carries the saved ``_metadata`` (a copy: torch writes ``assign`` into it), so
    each module's ``_load_from_state_dict`` gets its own ``local_metadata``.
    """
    report = planned.report
    wanted = {
        **{key: name for key, name, _ in planned.sources(planned.model)},
        **planned.extra,
    }  # mismatched shapes are left out, as on the fast path
    read = source.read(list(dict.fromkeys(wanted.values())), verify=verify)
    state: OrderedDict[str, Any] = OrderedDict((key, read[name]) for key, name in wanted.items())
    del read
    state.update(planned.objects)
    versions = source.torch_versions()
    if versions is not None:
        state._metadata = _by_model_names(versions, planned)  # type: ignore[attr-defined]
    result = torch_load_state_dict(module, state, assign=assign)
    del state
    expected_absent = set(report.skipped)
    if not assign:  # assigned tensors replace one side of a tie; the other is not filled
        expected_absent |= {t.key for t in report.tied if t.how == "filled through tie"}
    missing = tuple(k for k in result.missing_keys if k not in expected_absent)
    missing_set = set(missing)
    unexpected = tuple(result.unexpected_keys)
    # the plan's diagnosis explains the plan's keys: kept only while torch agrees on them
    same_keys = missing == report.missing and unexpected == report.unexpected
    return replace(
        report,
        matched=tuple(k for k in report.matched if k not in missing_set),
        missing=missing,
        unexpected=unexpected,
        causes=report.causes if same_keys else (),
        notes=(*report.notes, f"{why}: loaded through module.load_state_dict"),
    )


# Option defaults of every entry point: an option the caller left at its default is not
# repeated in a printed fix.
@dataclass(frozen=True)
class LoadOptions:
    """The options every loading entry point shares (``load_into``'s keywords), as one value.

    One value instead of nine keywords passed down each layer; ``given`` gives an entry
    point's own keywords back for the call a printed fix repeats.
    """

    strict: bool = True
    verify: bool = True
    prefix: str | None = None
    strip_prefix: str | None = None
    rename: Rename | None = None
    auto_fix: bool = True
    dtype: torch.dtype | None = None
    dry_run: bool = False
    assign: bool = False

    def given(self, *names: str) -> dict[str, object]:
        """The named options (all by default) as the keywords the caller wrote."""
        wanted = names or tuple(f.name for f in fields(self))
        return {name: getattr(self, name) for name in wanted}


# each option's default: a printed fix leaves out what the caller left at its default
_DEFAULTS: dict[str, object] = {
    **{f.name: f.default for f in fields(LoadOptions)},
    "device": "cpu",  # build_model and materialize
    "args": (),
    "kwargs": None,
}


def _as_code(name: str, value: object) -> str:
    """An option's value as code; values with no literal form print as the option's name."""
    if isinstance(value, torch.dtype):
        return f"torch.{_dtype_name(value)}"
    if isinstance(value, torch.device):
        value = str(value)
    try:
        code = literal(value) if not isinstance(value, dict) else repr(value)
        if ast.literal_eval(code) == value:
            return code
    except (TypeError, ValueError, SyntaxError):
        pass
    return name  # e.g. rename=rename for a callable, args=args for a config object


def source_code(source: Source) -> str:
    """How a printed fix names the source: the path itself, or ``state`` for a dict."""
    if isinstance(source, Checkpoint):
        return literal(str(source.path))
    if isinstance(source, (str, os.PathLike)):
        return literal(os.fspath(source))
    return "state"


def describe_call(entry: str, target: str, source: Source, given: Mapping[str, object]) -> Call:
    """The call being made, for fixes printed as that call corrected (defaults left out)."""
    options = tuple(
        (name, _as_code(name, value))
        for name, value in given.items()
        if not (
            value is _DEFAULTS.get(name)
            or (type(value) is type(_DEFAULTS.get(name)) and value == _DEFAULTS.get(name))
        )
    )
    return Call(entry, target, source_code(source), options)


def require_instance(module: object, call: Call) -> None:
    """Refuse a class (or anything else) where a model instance belongs, saying what to pass."""
    if isinstance(module, type):
        name = module.__qualname__
        raise UnsupportedObjectError(
            f"{call.entry}: got the class {name}, not a model: pass an instance, e.g. "
            f"model = {name}(...); {call.render()}; or build and load in one step with "
            f"statevault.build_model({name}, {call.source}, args=(...), kwargs={{...}})"
        )
    if not isinstance(module, nn.Module):
        raise UnsupportedObjectError(
            f"{call.entry}: expected a torch.nn.Module to load into, got {type(module).__name__}"
        )


def _refuse_optimizer_state(source: Source, call: Call) -> None:
    if isinstance(source, Mapping) and "param_groups" in source and "state" in source:
        raise UnsupportedObjectError(
            f"{call.entry}: this state dict is an optimizer's state_dict ('state' and "
            "'param_groups'), not a model's: load it with optimizer.load_state_dict(state), "
            "and the model from model.state_dict()"
        )


def _refuse_meta(module: nn.Module, planned: _Plan, call: Call) -> None:
    """No success that loaded nothing: meta tensors have no memory to load into."""
    report = planned.report
    on_meta = [k for k, t in planned.model.items() if isinstance(t, torch.Tensor) and t.is_meta]
    persistent = set(planned.model.keys())
    lost = [n for n, b in module.named_buffers() if b.is_meta and n not in persistent]
    fix = replace(call, entry="materialize").render()
    message = (
        f"Cannot load {report.source} into {report.target}: {len(on_meta)} tensor(s) are on "
        f"the meta device (e.g. '{on_meta[0]}'), which has no memory to load into, so nothing "
        f'would be loaded.\n  Fix: {fix} (allocates them once on device="cpu" and fills '
        "them from the checkpoint; with strict=False what it lacks gets its module's own "
        "initialisation)"
    )
    if lost:
        message += (
            f"\nNon-persistent buffers are on meta too ({', '.join(capped(lost, 5))}): no "
            "checkpoint holds them, so materialize cannot restore them. Build the model again "
            "instead: statevault.build_model(ModelClass, "
            f"{call.source}) or ModelClass() followed by {replace(call, entry='load_into').render()}"
        )
    raise MetaDeviceError(message)


def _torch_loads(module: nn.Module, planned: _Plan, assign: bool) -> str | None:
    """Why this load must go through ``module.load_state_dict``, or None for the fast path."""
    if assign:
        return "assign=True"
    if planned.subclassed:
        return "tensor-subclass parameters found"
    if has_custom_loading(module):
        return "custom load hooks found"
    return None


def load_with(module: nn.Module, source: Source, *, call: Call, options: LoadOptions) -> LoadReport:
    """What every entry point runs; ``call`` says which one, for the fixes it prints."""
    strict, verify, dtype = options.strict, options.verify, options.dtype
    prefix, strip_prefix, rename = options.prefix, options.strip_prefix, options.rename
    auto_fix, dry_run, assign = options.auto_fix, options.dry_run, options.assign
    require_instance(module, call)
    _refuse_optimizer_state(source, call)
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
            call=call,
        )
        report = planned.report
        why = _torch_loads(module, planned, assign)
        # Refused before any weight is touched, unless torch has a part: then missing and
        # unexpected keys get torch's verdict after its hooks ran (a post-hook may forgive
        # keys). Shapes are judged here always: torch's strict refuses them too, but only
        # after it has loaded everything else.
        if strict and not report.ok and (why is None or report.shape_mismatches):
            raise StateDictMismatchError(report.error_message(), report)
        if dry_run:
            if why is not None:
                note = f"dry run: {why}: load_state_dict would run it, which may change the outcome"
                return replace(report, notes=(*report.notes, note))
            return report
        if planned.on_meta and not assign:  # assign=True replaces meta tensors: its purpose
            _refuse_meta(module, planned, call)
        if dtype is not None:
            module.to(dtype)  # floating-point tensors only; ties survive (same Parameter)
        if why is not None:
            report = _fill_with_torch(module, planned, opened, verify, assign, why)
            if strict and not report.ok:  # what torch's strict=True raises on
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
    assign: bool = False,
) -> LoadReport:
    """Load a checkpoint (any file or folder :func:`open_checkpoint` takes, or a state dict)
    into ``module``; a training folder gives its model weights.

    Returns a :class:`LoadReport`. With ``strict=True`` any missing, unexpected or
    shape-mismatched key raises one :class:`StateDictMismatchError` naming the likely cause and
    the fix (this very call, corrected), *before* any weight is touched. With ``strict=False``
    everything that fits is loaded; tensors the file lacks or whose shapes differ keep the
    values the module has, and the report lists them. A module whose tensors are on the meta
    device is refused with :class:`MetaDeviceError` (use :func:`materialize`).

    Names: ``auto_fix`` removes wrapper prefixes (``module.``, ``_orig_mod.``, ...) when that is
    unambiguous; ``prefix="backbone."`` loads only that sub-tree of the checkpoint (the other
    keys are ignored, not unexpected); ``strip_prefix`` removes a prefix from the keys that have
    it; ``rename`` is ``[(regex, replacement), ...]`` or a callable. ``dtype`` converts the
    module's floating-point tensors to that dtype and loads into them. ``dry_run`` only reports
    (strict still raises); ``verify`` checks tensor checksums while reading.

    ``assign=True`` is torch's ``load_state_dict(..., assign=True)``: the module's tensors
    become the loaded ones (read into fresh memory; parameters stay parameters and keep
    ``requires_grad``), the way to fill a model built on the meta device. Build optimizers
    after such a load. Modules that customise loading, tensor-subclass parameters and
    version upgrades are loaded through ``load_state_dict`` itself; see docs/loading.md,
    "Differences from torch's load_state_dict".

    Example::

        report = statevault.load_into(model, "model.safetensors")
        print(report)  # Loaded 2 of 2 model tensor(s) from ...: all keys matched successfully
    """
    options = LoadOptions(
        strict, verify, prefix, strip_prefix, rename, auto_fix, dtype, dry_run, assign
    )
    call = describe_call("load_into", "model", source, options.given())
    return load_with(module, source, call=call, options=options)


def load_model(
    model: nn.Module,
    source: Source,
    *,
    strict: bool = True,
    verify: bool = True,
    prefix: str | None = None,
    strip_prefix: str | None = None,
    rename: Rename | None = None,
    auto_fix: bool = True,
    dtype: torch.dtype | None = None,
    assign: bool = False,
) -> LoadReport:
    """Load ``source`` into the existing ``model``, as ``safetensors.torch.load_model`` does.

    The same as :func:`load_into` (same options, same report, same errors), under the name
    safetensors users know. To build the model and load it in one step, use
    :func:`build_model`.

    Example::

        report = statevault.load_model(model, "model.safetensors")
    """
    options = LoadOptions(
        strict, verify, prefix, strip_prefix, rename, auto_fix, dtype, assign=assign
    )
    call = describe_call("load_model", "model", source, options.given())
    return load_with(model, source, call=call, options=options)


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
    Works on a module whose parameters are on the meta device (only shapes are compared).

    Example::

        report = statevault.check(model, "ckpt.safetensors")
        if not report.ok:
            print(report)
    """
    options = LoadOptions(
        strict=False,
        prefix=prefix,
        strip_prefix=strip_prefix,
        rename=rename,
        auto_fix=auto_fix,
        dtype=dtype,
        dry_run=True,
    )
    given = options.given("prefix", "strip_prefix", "rename", "auto_fix", "dtype")
    return load_with(
        module, source, call=describe_call("check", "model", source, given), options=options
    )
