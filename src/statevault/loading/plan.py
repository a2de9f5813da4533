"""Plan a load from the checkpoint's header alone: what matches, what differs, and why.

No tensor data is read and the module is not touched. ``plan`` runs small steps, each a
function returning data: map the names (``loading.keymap``), compare each model tensor's
shape and dtype with the file's (``compare``), fill BatchNorm counters the way torch's
version upgrade does (``upgraded_counters``), resolve tied tensors (``resolve_ties``), list
the checkpoint keys nothing matched (``unexpected_names``), diagnose (``loading.diagnose``),
and assemble the report. The resulting ``LoadPlan`` is what ``loading.fill`` executes.

May import: ``loading.keymap``, ``loading.diagnose``, ``loading.fixes``, ``loading.options``,
``loading.module_state``, ``readers``, ``engine``, ``fileformat``, ``reports``,
``statevault.errors``. Imported by ``loading.fill`` and ``loading.load_into``.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

import torch
from torch import nn

from statevault.engine.ties import any_repeated, identity_groups, start_addresses
from statevault.errors import UnsupportedObjectError
from statevault.fileformat.dtypes import dtype_name
from statevault.loading.diagnose import diagnose
from statevault.loading.fixes import Call
from statevault.loading.keymap import KeyMap, key_selector, map_keys
from statevault.loading.module_state import ModelState, model_state
from statevault.loading.options import LoadOptions
from statevault.readers.base import Checkpoint
from statevault.reports.load_entries import Cause, DtypeCast, ShapeMismatch, TiedKey, TieStatus
from statevault.reports.load_report import LoadReport, capped

# Tensors the fast path reads into raw memory; any other type (a wrapper subclass such as
# DTensor, a lazy parameter) is loaded the way torch loads it (copy_ or swap_tensors).
_PLAIN_TENSOR_TYPES = (torch.Tensor, nn.Parameter)
_COUNTER = "num_batches_tracked"


@dataclass(frozen=True)
class LoadPlan:
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


@dataclass
class Comparison:
    """Model keys sorted by how they compare with the checkpoint (``compare``'s result)."""

    matched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    mismatches: list[ShapeMismatch] = field(default_factory=list)
    casts: list[DtypeCast] = field(default_factory=list)
    found: int = 0  # model keys the checkpoint has
    objects: dict[str, Any] = field(default_factory=dict)  # saved non-tensor extra state
    subclassed: bool = False
    maybe_tied: bool = False
    on_meta: bool = False


def compare(
    model: ModelState, source: Checkpoint, pairs: Mapping[str, str], dtype: torch.dtype | None
) -> Comparison:
    """One pass over the model's tensors: matched, missing, other shape, other dtype.

    Keeps only what the report lists; tied and meta tensors are spotted from start
    addresses, collected in a compact array rather than a table per key.
    """
    result = Comparison()
    addresses = start_addresses()
    for key, dest in model.items():
        if not isinstance(dest, torch.Tensor):  # a module's extra state, e.g. a dict
            _compare_extra_state(key, source, pairs, result)
            continue
        if type(dest) not in _PLAIN_TENSOR_TYPES:  # no plain memory: data_ptr() may be 0
            result.subclassed = True
        elif dest.numel():
            addresses.append(dest.data_ptr())
        name = pairs.get(key)
        if name is None:
            result.missing.append(key)
            continue
        result.found += 1
        shape, stored_dtype = source.signature(name)
        if tuple(dest.shape) != shape:
            result.mismatches.append(ShapeMismatch(key, shape, tuple(dest.shape)))
            continue
        if name == key:
            # the checkpoint's own string: it is alive anyway, so the report holds no new
            # string per key (1.3 MiB of fresh keys for 20,000 tensors otherwise)
            key = name
        result.matched.append(key)
        target = dtype if dtype is not None and dest.is_floating_point() else dest.dtype
        if stored_dtype != target:
            result.casts.append(DtypeCast(key, dtype_name(stored_dtype), dtype_name(target)))
    result.maybe_tied = any_repeated(addresses)
    # only a meta tensor with elements has address 0 (asked of torch: ``0 in addresses``
    # compares one Python int per tensor, 0.66 ms for 20,000; this takes ~0.02 ms)
    result.on_meta = bool(addresses) and bool(
        torch.frombuffer(addresses, dtype=torch.int64).eq(0).any()
    )
    return result


def _compare_extra_state(
    key: str, source: Checkpoint, pairs: Mapping[str, str], result: Comparison
) -> None:
    """A module's extra state: saved as one tensor (torch hands it to set_extra_state), as a
    value in the file's nested state, or missing."""
    if key in pairs:
        result.found += 1
        result.matched.append(key)
        return
    saved, value = source.stored_object(key)
    if saved:
        result.matched.append(key)
        result.objects[key] = value
    else:
        result.missing.append(key)


def refuse_non_tensors(source: Checkpoint, missing: Collection[str], target: str) -> None:
    """A saved value that is not a tensor under a tensor's key is an error, not a gap.

    torch's load_state_dict refuses it too ("expected torch.Tensor ... but received"),
    strict or not; reporting the key as missing would hide what the file holds.
    """
    for key in missing:
        saved, value = source.stored_object(key)
        if saved:
            text = repr(value)
            short = text if len(text) <= 60 else f"{text[:57]}..."
            raise UnsupportedObjectError(
                f"{source.label}: '{key}' holds a {type(value).__name__} ({short}), but "
                f"'{key}' of {target} is a tensor: expected a tensor there. Save the tensor "
                "itself under that key"
            )


def upgraded_counters(
    module: nn.Module, missing: Collection[str], source: Checkpoint, pairs: Mapping[str, str]
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


def resolve_ties(
    model: Mapping[str, torch.Tensor],
    matched: Collection[str],
    missing: Collection[str],
    sources: Mapping[str, str],
    aliases: Mapping[str, str],
) -> list[TiedKey]:
    """How each tied model tensor is filled: shared in the file too, stored separately, or
    missing from the file and filled through its tie (those count as loaded)."""
    notes = []
    for keys in identity_groups(model.items()):
        loaded = [k for k in keys if k in matched]
        if not loaded:
            continue
        stored = {aliases.get(sources[k], sources[k]) for k in loaded}
        for key in keys:
            if key == loaded[0]:
                continue
            if key in missing:
                notes.append(TiedKey(key, loaded[0], TieStatus.FILLED_THROUGH_TIE))
            elif key in matched:
                how = TieStatus.SHARED if len(stored) == 1 else TieStatus.STORED_SEPARATELY
                notes.append(TiedKey(key, loaded[0], how))
    return notes


def _tied_keys(
    model: ModelState,
    pairs: Mapping[str, str],
    skipped: Collection[str],
    matched: Collection[str],
    missing: Collection[str],
    aliases: Mapping[str, str],
) -> list[TiedKey]:
    """``resolve_ties`` given the model as listed, over the keys read from the file."""
    by_key = dict(model.items())
    sources = {k: pairs[k] for k in by_key if k in pairs and k not in skipped}
    return resolve_ties(by_key, set(matched), set(missing), sources, aliases)


def unexpected_names(
    pairs: Mapping[str, str], model_keys: Collection[str], objects: Collection[str]
) -> dict[str, str]:
    """Checkpoint keys (mapped -> original) that no model key takes.

    Tensors stored inside a module's non-tensor extra state belong to it, not unexpected.
    """
    model_set = set(model_keys)
    inside = tuple(f"{key}." for key in objects)
    return {
        k: n
        for k, n in pairs.items()
        if k not in model_set and not (inside and k.startswith(inside))
    }


def _causes(
    module: nn.Module,
    model: ModelState,
    source: Checkpoint,
    keymap: KeyMap,
    compared: Comparison,
    missing: Collection[str],
    extra: Mapping[str, str],
    options: LoadOptions,
    call: Call | None,
) -> tuple[Cause, ...]:
    """The diagnosis, given what it needs from the model and the file (shapes only)."""
    by_key, pairs, mismatches = dict(model.items()), keymap.pairs, compared.mismatches
    buffers = {name for name, _ in module.named_buffers()}
    return diagnose(
        model_keys=list(by_key),
        checkpoint_keys=list(pairs),
        missing={k: tuple(getattr(by_key[k], "shape", ())) for k in missing},
        unexpected={k: source.signature(n)[0] for k, n in extra.items()},
        mismatches=[(m.key, m.checkpoint_shape, m.model_shape) for m in mismatches],
        buffers=buffers,
        non_persistent=buffers.difference(by_key),
        prefix=options.prefix,
        ignored=keymap.ignored,
        optimizer=_holds_optimizer_state(source, pairs),
        stored={m.key: pairs[m.key] for m in mismatches},
        call=call,
    )


def _holds_optimizer_state(source: Checkpoint, pairs: Mapping[str, str]) -> bool:
    """True when the saved state is an optimizer's state_dict ('state' and 'param_groups')."""
    if pairs and not all(name.startswith("state.") for name in pairs.values()):
        return False
    return source.stored_object("param_groups")[0]


def _notes(keymap: KeyMap, upgraded: list[str], dtype: torch.dtype | None) -> tuple[str, ...]:
    notes = list(keymap.notes)
    if upgraded:
        notes.append(
            f"{len(upgraded)} BatchNorm counter(s) ({', '.join(capped(upgraded, 3))}) are absent "
            "from a checkpoint that predates them (module version < 2): they keep their "
            "values, as torch's version upgrade does"
        )
    if dtype is not None:
        notes.append(f"dtype={dtype_name(dtype)}: floating-point tensors are stored as that")
    return tuple(notes)


def _moved(
    missing: list[str], filled: list[str], matched: list[str]
) -> tuple[list[str], list[str]]:
    """(matched, missing) once the ``filled`` keys count as loaded instead of missing."""
    if not filled:
        return matched, missing
    done = set(filled)
    return [*matched, *filled], [k for k in missing if k not in done]


def plan(
    module: nn.Module, source: Checkpoint, options: LoadOptions, call: Call | None = None
) -> LoadPlan:
    """Compare names, shapes and dtypes, reading no tensor data (tables per key only on need)."""
    model = model_state(module)
    keymap = map_keys(
        source.keys(),
        model.keys(),
        prefix=options.prefix,
        strip_prefix=options.strip_prefix,
        rename=options.rename,
        auto_fix=options.auto_fix,
        keys=options.keys,
    )
    pairs, dtype = keymap.pairs, options.float_dtype
    compared = compare(model, source, pairs, dtype)
    matched, missing = compared.matched, compared.missing
    not_requested: list[str] = []
    if options.keys is not None and missing:  # keys= left them out: not asked for, not missing
        wanted = key_selector(options.keys)
        not_requested = [k for k in missing if not wanted(k)]
        missing = [k for k in missing if wanted(k)]
    upgraded: list[str] = []
    if missing:
        refuse_non_tensors(source, missing, type(module).__name__)
        upgraded = upgraded_counters(module, missing, source, pairs)
        matched, missing = _moved(missing, upgraded, matched)
    skipped = frozenset(m.key for m in compared.mismatches)
    tied: list[TiedKey] = []
    if compared.maybe_tied:
        tied = _tied_keys(model, pairs, skipped, matched, missing, source.aliases)
        through_tie = [t.key for t in tied if t.how is TieStatus.FILLED_THROUGH_TIE]
        matched, missing = _moved(missing, through_tie, matched)
    extra: dict[str, str] = {}
    if compared.found < len(pairs):  # some checkpoint key matched no model key
        extra = unexpected_names(pairs, model.keys(), compared.objects)
    causes: tuple[Cause, ...] = ()
    if missing or extra or compared.mismatches:
        causes = _causes(module, model, source, keymap, compared, missing, extra, options, call)
    report = LoadReport(
        source=source.label,
        target=type(module).__name__,
        matched=tuple(matched),
        missing_keys=list(missing),
        unexpected_keys=list(extra),
        shape_mismatches=tuple(compared.mismatches),
        casts=tuple(compared.casts),
        tied=tuple(tied),
        mappings=keymap.applied,
        ignored=keymap.ignored,
        not_requested=tuple(not_requested),
        causes=causes,
        notes=_notes(keymap, upgraded, dtype),
        dry_run=options.dry_run,
    )
    return LoadPlan(
        report,
        model,
        pairs,
        skipped,
        extra,
        compared.maybe_tied,
        compared.on_meta,
        compared.objects,
        compared.subclassed,
    )
