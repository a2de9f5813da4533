"""load_into(), load_model() and check(): fill an existing module from a checkpoint.

The order is fixed: check the arguments (``loading.options``), plan from the header alone
(``loading.plan``: names, shapes, dtypes, ties, diagnosis), and raise when strict, all before
a single weight is touched or a byte of tensor data is read. Then one of two fills
(``loading.fill``) with the same report: in place, straight from the file, for plain
modules; through ``module.load_state_dict`` itself for modules that customise loading,
tensor-subclass parameters and ``assign=True``. There missing and unexpected keys get
torch's strict verdict after its hooks ran: a post-hook may forgive keys. ``mmap=True``
binds instead of filling: the module's tensors become views of the file (``loading.mapped``).

May import: ``loading.plan``, ``loading.fill``, ``loading.mapped``, ``loading.options``,
``loading.fixes``, ``loading.keymap``, ``loading.module_state``, ``readers``, ``engine``, ``reports``,
``statevault.errors``. Imported by ``loading.build`` and the public package.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import torch
from torch import nn

from statevault.engine.fsspec_storage import StorageOptions
from statevault.errors import MetaDeviceError, StateDictMismatchError, UnsupportedObjectError
from statevault.fileformat.dtypes import DtypeLike
from statevault.loading.fill import fill_in_place, fill_with_torch, torch_load_reason
from statevault.loading.fixes import Call, EntryPoint
from statevault.loading.keymap import KeySelection, Prefixes, Rename
from statevault.loading.mapped import bind_mapped
from statevault.loading.module_state import model_state
from statevault.loading.options import LoadOptions, describe_call
from statevault.loading.plan import LoadPlan, plan
from statevault.readers.base import Checkpoint
from statevault.readers.dispatch import Source, open_source
from statevault.reports.load_report import LoadReport, capped


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


def _refuse_meta(module: nn.Module, planned: LoadPlan, call: Call) -> None:
    """No success that loaded nothing: meta tensors have no memory to load into."""
    report = planned.report
    on_meta = [k for k, t in planned.model.items() if isinstance(t, torch.Tensor) and t.is_meta]
    persistent = set(planned.model.keys())
    lost = [n for n, b in module.named_buffers() if b.is_meta and n not in persistent]
    fix = replace(call, entry=EntryPoint.MATERIALIZE).render()
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
            f"{call.source}) or ModelClass() followed by {replace(call, entry=EntryPoint.LOAD_INTO).render()}"
        )
    raise MetaDeviceError(message)


def load_with(module: nn.Module, source: Source, *, call: Call, options: LoadOptions) -> LoadReport:
    """What every entry point runs; ``call`` says which one, for the fixes it prints."""
    require_instance(module, call)
    _refuse_optimizer_state(source, call)
    opened, owned = open_source(source, options.storage_options)
    try:
        planned = plan(module, opened, options, call)
        return _execute(module, planned, opened, options, call)
    finally:
        if owned:
            opened.close()


def _execute(
    module: nn.Module, planned: LoadPlan, opened: Checkpoint, options: LoadOptions, call: Call
) -> LoadReport:
    """Judge the plan (strict, dry run, meta), then fill the module the way it needs."""
    strict, assign, dtype = options.strict, options.assign, options.float_dtype
    report = planned.report
    why = torch_load_reason(module, planned, assign)
    # Refused before any weight is touched, unless torch has a part: then missing and
    # unexpected keys get torch's verdict after its hooks ran (a post-hook may forgive
    # keys). Shapes are judged here always: torch's strict refuses them too, but only
    # after it has loaded everything else.
    if strict and not report.ok and (why is None or report.shape_mismatches):
        raise StateDictMismatchError(report.error_message(), report)
    if options.dry_run:
        if why is not None:
            note = f"dry run: {why}: load_state_dict would run it, which may change the outcome"
            return replace(report, notes=(*report.notes, note))
        return report
    if planned.on_meta and not (assign or options.mmap):  # both replace meta tensors
        _refuse_meta(module, planned, call)
    if dtype is not None:
        module.to(dtype)  # floating-point tensors only; ties survive (same Parameter)
    if why is not None:
        report = fill_with_torch(
            module, planned, opened, options.verify, assign, why, mapped=options.mmap
        )
        if strict and not report.ok:  # what torch's strict=True raises on
            raise StateDictMismatchError(report.error_message(), report)
        return report
    if options.mmap:
        return bind_mapped(module, planned, opened, options.verify)
    # module.to(dtype) replaces buffer objects, so only then is a planned state_dict()
    # stale (a walk lists the module as it is); otherwise it would be built a second time.
    model = planned.model if dtype is None else model_state(module)
    fill_in_place(model, planned, opened, options.verify)
    return report


def load_into(
    module: nn.Module,
    source: Source,
    *,
    strict: bool = True,
    verify: bool = True,
    prefix: str | None = None,
    strip_prefix: Prefixes | None = None,
    rename: Rename | None = None,
    auto_fix: bool = True,
    dtype: DtypeLike | None = None,
    dry_run: bool = False,
    assign: bool = False,
    keys: KeySelection | None = None,
    storage_options: StorageOptions | None = None,
    mmap: bool = False,
) -> LoadReport:
    """Load a checkpoint (any file or folder :class:`Checkpoint` opens, or a state dict)
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
    it (a str, or a sequence of them: the first one a key starts with); ``rename`` is
    ``[(regex, replacement), ...]`` or a callable. ``keys`` (a regex searched in each of the
    model's names, or a callable name -> bool) loads only those keys: the model's other keys
    are left as they are and listed in ``report.not_requested`` (not missing, so strict does
    not refuse them), checkpoint keys outside it are ignored. ``dtype`` (``torch.bfloat16`` or a name
    such as ``"bf16"``) converts the module's floating-point tensors to that dtype and loads
    into them. ``dry_run`` only reports (strict still raises); ``verify`` checks tensor
    checksums while reading. A bad option raises :class:`InvalidArgumentError` before the
    file is opened. A URL source (``s3://bucket/model.safetensors``) reads only the header and
    the tensors loaded, with ``storage_options`` passed to fsspec (credentials, endpoint).

    ``assign=True`` is torch's ``load_state_dict(..., assign=True)``: the module's tensors
    become the loaded ones (read into fresh memory; parameters stay parameters and keep
    ``requires_grad``), the way to fill a model built on the meta device. Build optimizers
    after such a load. Modules that customise loading, tensor-subclass parameters and
    version upgrades are loaded through ``load_state_dict`` itself; see docs/loading.md,
    "Differences from torch's load_state_dict".

    ``mmap=True`` (safetensors files, CPU models) replaces the module's tensors as
    ``assign=True`` does, with views of a private, copy-on-write mapping of the file instead
    of copies: processes loading one file share its pages, writes stay in the process that
    makes them, and the module keeps its dtypes (a cast is a copy). See docs/loading.md,
    "Memory-mapped loads".

    Example::

        report = statevault.load_into(model, "model.safetensors")
        print(report)  # Loaded 2 of 2 model tensor(s) from ...: all keys matched successfully
    """
    options = LoadOptions(
        strict,
        verify,
        prefix,
        strip_prefix,
        rename,
        auto_fix,
        dtype,
        dry_run,
        assign,
        keys,
        storage_options,
        mmap,
    )
    call = describe_call(EntryPoint.LOAD_INTO, "model", source, options.given())
    return load_with(module, source, call=call, options=options)


def load_model(
    model: nn.Module,
    source: Source,
    *,
    strict: bool = True,
    verify: bool = True,
    prefix: str | None = None,
    strip_prefix: Prefixes | None = None,
    rename: Rename | None = None,
    auto_fix: bool = True,
    dtype: DtypeLike | None = None,
    assign: bool = False,
    keys: KeySelection | None = None,
    storage_options: StorageOptions | None = None,
    mmap: bool = False,
) -> LoadReport:
    """Load ``source`` into the existing ``model``, as ``safetensors.torch.load_model`` does.

    The same as :func:`load_into` (same options, same report, same errors), under the name
    safetensors users know. To build the model and load it in one step, use
    :func:`build_model`.

    Example::

        report = statevault.load_model(model, "model.safetensors")
    """
    options = LoadOptions(
        strict,
        verify,
        prefix,
        strip_prefix,
        rename,
        auto_fix,
        dtype,
        assign=assign,
        keys=keys,
        storage_options=storage_options,
        mmap=mmap,
    )
    call = describe_call(EntryPoint.LOAD_MODEL, "model", source, options.given())
    return load_with(model, source, call=call, options=options)


def check(
    module: nn.Module,
    source: Source,
    *,
    prefix: str | None = None,
    strip_prefix: Prefixes | None = None,
    rename: Rename | None = None,
    auto_fix: bool = True,
    dtype: DtypeLike | None = None,
    keys: KeySelection | None = None,
    storage_options: StorageOptions | None = None,
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
        keys=keys,
        storage_options=storage_options,
    )
    given = options.given(
        "prefix", "strip_prefix", "rename", "auto_fix", "dtype", "keys", "storage_options"
    )
    return load_with(
        module,
        source,
        call=describe_call(EntryPoint.CHECK, "model", source, given),
        options=options,
    )
