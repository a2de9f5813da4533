"""Build a module without initialising its weights, then fill it from a checkpoint.

The tutorial flow ``model = Model(); model.load_state_dict(torch.load(path))`` spends most
of its time on random initialisation that the load then overwrites, and holds the weights
twice. Here parameters are created on the meta device while the module is built (no memory,
init functions become no-ops), then each one gets uninitialised memory once and is read
straight from the file into it: ~1x memory, no wasted init.

Only *parameters* go to meta. Buffers are built for real, so tables computed in ``__init__``
and not saved (rotary/positional tables, masks) keep their correct values. Anything still on
meta after loading is an error, never silently left behind. Uninitialised memory is never
handed out either: a tensor the file does not fill (``strict=False``: missing, or skipped for
its shape) is initialised the way the module itself initialises it, as ``Model()`` would have
(``loading.initialise``). Building on meta is ``loading.meta_init``'s ``skip_init``.

May import: ``loading.load_into``, ``loading.options``, ``loading.fixes``,
``loading.meta_init``, ``loading.initialise``, ``loading.keymap``, ``readers``, ``engine``,
``reports``, ``statevault.errors``. Imported by the public package.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, TypeVar

import torch
from torch import nn

from statevault.engine.fsspec_storage import StorageOptions
from statevault.errors import StateVaultError, UnsupportedObjectError
from statevault.fileformat.dtypes import DtypeLike
from statevault.loading.fixes import Call, EntryPoint
from statevault.loading.initialise import initialise
from statevault.loading.keymap import KeySelection, Prefixes, Rename
from statevault.loading.load_into import load_with, require_instance
from statevault.loading.meta_init import skip_init
from statevault.loading.options import LoadOptions, describe_call
from statevault.readers.base import Checkpoint
from statevault.readers.devices import mapped_device, usable_device
from statevault.readers.dispatch import Source, open_source
from statevault.reports.load_report import LoadReport, capped

logger = logging.getLogger("statevault")
M = TypeVar("M", bound=nn.Module)


# (qualified name, owner module, attribute, the meta tensor, is a parameter)
_Slot = tuple[str, nn.Module, str, torch.Tensor, bool]


def _meta_slots(module: nn.Module) -> list[_Slot]:
    """Every parameter and persistent buffer on meta, once per owner (ties appear per owner).

    Non-persistent buffers are left out: no checkpoint holds them, so nothing could fill them.
    """
    slots: list[_Slot] = []
    for prefix, owner in module.named_modules(remove_duplicate=False):
        dot = f"{prefix}." if prefix else ""
        for attr, param in owner._parameters.items():
            if param is not None and param.is_meta:
                slots.append((dot + attr, owner, attr, param, True))
        for attr, buffer in owner._buffers.items():
            if (
                buffer is not None
                and buffer.is_meta
                and attr not in owner._non_persistent_buffers_set
            ):
                slots.append((dot + attr, owner, attr, buffer, False))
    return slots


def _still_on_meta(module: nn.Module) -> list[str]:
    names = [n for n, p in module.named_parameters(remove_duplicate=False) if p.is_meta]
    return names + [n for n, b in module.named_buffers(remove_duplicate=False) if b.is_meta]


def _allocate(slots: Sequence[_Slot], device: torch.device) -> dict[str, torch.Tensor]:
    """Give every meta slot uninitialised memory; ties stay ties. Returns name -> tensor.

    The memory is garbage until the load (or ``_initialise``) writes it; ``materialize``
    makes sure one of them does for every tensor, or puts the meta tensors back.
    """
    fresh: dict[int, torch.Tensor] = {}
    named = {}
    for name, owner, attr, meta, is_param in slots:  # slots hold the meta tensors: ids unique
        if id(meta) not in fresh:
            data = torch.empty(meta.shape, dtype=meta.dtype, device=device)
            if isinstance(meta, nn.Parameter):
                data = type(meta)(data, requires_grad=meta.requires_grad)
            fresh[id(meta)] = data
        if is_param:
            owner._parameters[attr] = fresh[id(meta)]  # type: ignore[assignment]
        else:
            owner._buffers[attr] = fresh[id(meta)]
        named[name] = fresh[id(meta)]
    return named


def _restore(slots: Sequence[_Slot]) -> None:
    """Put the meta tensors back: a failed materialize leaves no uninitialised memory behind."""
    for _, owner, attr, meta, is_param in slots:
        if is_param:
            owner._parameters[attr] = meta  # type: ignore[assignment]
        else:
            owner._buffers[attr] = meta


# the load options build_model and materialize take (load_into's, less dry_run and assign)
_BUILD_OPTIONS = (
    "strict",
    "verify",
    "prefix",
    "strip_prefix",
    "rename",
    "auto_fix",
    "dtype",
    "keys",
    "storage_options",
    "mmap",
)


def _materialize(
    module: nn.Module,
    source: Source,
    *,
    call: Call,
    options: LoadOptions,
    device: str | torch.device,
) -> LoadReport:
    require_instance(module, call)
    strict, dtype = options.strict, options.float_dtype
    target = mapped_device(device) if options.mmap else usable_device(device)
    if dtype is not None:
        module.to(dtype)  # on meta parameters: free, and each is allocated once in that dtype
    slots = _meta_slots(module)
    # mmap=True: what the file holds becomes views of it; only what it leaves out gets memory
    fresh = {} if options.mmap else _allocate(slots, target)
    notes: list[str] = []
    initialised: list[str] = []

    # the source is opened once for both passes (a URL's header is fetched once) and closed
    # at the end if it was opened here
    opened: list[Checkpoint] = []
    closing: list[Checkpoint] = []
    once = replace(options, storage_options=None)

    def load(*, dry_run: bool) -> LoadReport:
        if not opened:
            checkpoint, owned = open_source(source, options.storage_options)
            opened.append(checkpoint)
            if owned:
                closing.append(checkpoint)
        return load_with(module, opened[0], call=call, options=replace(once, dry_run=dry_run))

    try:
        # initialise first what the file will not fill: the load then overwrites the rest
        if not strict or options.keys is not None:
            planned = load(dry_run=True)
            left_out = (*planned.missing_keys, *planned.skipped, *planned.not_requested)
            if options.mmap:
                wanted = set(left_out)
                fresh = _allocate([slot for slot in slots if slot[0] in wanted], target)
            todo = [k for k in left_out if k in fresh]
            if todo:
                notes, initialised = initialise(module, todo, fresh, planned.source)
        report = load(dry_run=False)
        unfilled = [
            k
            for k in (*report.missing_keys, *report.skipped, *report.not_requested)
            if k in fresh and k not in initialised
        ]
        if unfilled:  # a load hook changed the keys after the plan
            raise StateVaultError(
                f"{report.source}: a load hook left {', '.join(capped(unfilled))} unfilled. "
                "Build the model normally and use statevault.load_into(model, path, "
                "strict=False) instead"
            )
        left = _still_on_meta(module)
        if left:
            raise StateVaultError(
                f"{report.source}: still on the meta device after loading: "
                f"{', '.join(capped(left))}. A buffer computed from a parameter in __init__ "
                "cannot be built without weights; build the model normally and use "
                "statevault.load_into"
            )
    except BaseException:
        _restore(slots)
        raise
    finally:
        for checkpoint in closing:
            checkpoint.close()
    if initialised:
        report = replace(report, notes=(*report.notes, *notes), initialised=tuple(initialised))
    return report


def materialize(
    module: nn.Module,
    source: Source,
    *,
    strict: bool = True,
    verify: bool = True,
    device: str | torch.device = "cpu",
    prefix: str | None = None,
    strip_prefix: Prefixes | None = None,
    rename: Rename | None = None,
    auto_fix: bool = True,
    dtype: DtypeLike | None = None,
    keys: KeySelection | None = None,
    storage_options: StorageOptions | None = None,
    mmap: bool = False,
) -> LoadReport:
    """Give a module's meta parameters (and persistent buffers) real memory, filled from ``source``.

    For a module built under :func:`skip_init`, or moved with ``.to("meta")``. Each tensor is
    allocated once on ``device`` and filled in place (ties kept); the options are
    :func:`load_into`'s. With ``strict=True`` missing, unexpected or mismatched keys raise
    :class:`StateDictMismatchError`. With ``strict=False`` tensors the file does not fill
    (missing, or skipped for their shape) get the module's own initialisation (see
    :func:`build_model`) and ``report.initialised`` lists them, as are the keys ``keys=``
    leaves out (``report.not_requested``). On any error the module is left as it was, on meta.
    ``mmap=True`` (CPU): the tensors the file holds become views of it instead (see
    :func:`build_model`).
    """
    options = LoadOptions(
        strict,
        verify,
        prefix,
        strip_prefix,
        rename,
        auto_fix,
        dtype,
        keys=keys,
        storage_options=storage_options,
        mmap=mmap,
    )
    given = {**options.given(*_BUILD_OPTIONS), "device": device}
    call = describe_call(EntryPoint.MATERIALIZE, "model", source, given)
    return _materialize(module, source, call=call, options=options, device=device)


def _factory_name(factory: object) -> str:
    """How a printed fix names the factory: its (qualified) name, or ``factory`` for lambdas."""
    for attribute in ("__qualname__", "__name__"):
        name = getattr(factory, attribute, "")
        if isinstance(name, str) and name and all(p.isidentifier() for p in name.split(".")):
            return name
    return "factory"


def _require_factory(factory: object, call: Call) -> None:
    """Refuse an instance (or anything not callable) where the model's class belongs."""
    if isinstance(factory, nn.Module):
        name = type(factory).__qualname__
        raise UnsupportedObjectError(
            f"build_model builds the model itself: pass the class (or a function that returns "
            f"the model), not an instance: statevault.build_model({name}, {call.source}, "
            f"args=(...), kwargs={{...}}). To load into the model you already have, use "
            f"statevault.load_into(model, {call.source})"
        )
    if not callable(factory):
        raise UnsupportedObjectError(
            f"build_model: factory must be a model class or a callable returning a module, "
            f"got {type(factory).__name__}"
        )


def build_model(
    factory: Callable[..., M],
    source: Source,
    *,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    strict: bool = True,
    verify: bool = True,
    device: str | torch.device = "cpu",
    prefix: str | None = None,
    strip_prefix: Prefixes | None = None,
    rename: Rename | None = None,
    auto_fix: bool = True,
    dtype: DtypeLike | None = None,
    keys: KeySelection | None = None,
    storage_options: StorageOptions | None = None,
    mmap: bool = False,
) -> M:
    """Build ``factory(*args, **kwargs)`` without weight init and load ``source`` into it.

    Several times faster than ``Model()`` followed by ``load_state_dict``, with the weights
    in memory once. ``factory`` is the model class or any callable returning a module;
    constructor arguments go in ``args``/``kwargs`` so they never clash with the load options,
    which are :func:`load_into`'s plus ``device``. With ``strict=False`` every tensor the file
    does not fill (missing, or skipped because its shape differs, e.g. a new classification
    head) is initialised as the model's constructor would have: by the enclosing
    transformers-style ``_init_weights(module)`` where the model has one, otherwise by the
    module's ``reset_parameters()``; never left as uninitialised memory. So are the keys
    ``keys=`` leaves out, whatever ``strict`` is. The report is logged
    as a warning when it is not clean (use :func:`skip_init` + :func:`materialize` to get it).

    ``mmap=True`` (safetensors files, ``device="cpu"``), the inference path: no memory is
    allocated or filled for the weights the file holds; they become views of a private,
    copy-on-write mapping of it, so worker processes serving one model share one copy of
    its weights (the page cache's). Digests are checked from the mapping unless
    ``verify=False``. See docs/loading.md, "Memory-mapped loads".

    Example::

        model = statevault.build_model(Transformer, "model.safetensors", kwargs={"dim": 512})
    """
    options = LoadOptions(
        strict,
        verify,
        prefix,
        strip_prefix,
        rename,
        auto_fix,
        dtype,
        keys=keys,
        storage_options=storage_options,
        mmap=mmap,
    )
    given = {
        "args": tuple(args) if isinstance(args, list) else args,
        "kwargs": kwargs,
        **options.given(*_BUILD_OPTIONS),
        "device": device,
    }
    call = describe_call(EntryPoint.BUILD_MODEL, _factory_name(factory), source, given)
    _require_factory(factory, call)
    with skip_init():
        module = factory(*args, **(kwargs or {}))
    if not isinstance(module, nn.Module):
        raise UnsupportedObjectError(
            f"build_model: {factory!r} returned {type(module).__name__}, not a torch.nn.Module"
        )
    report = _materialize(module, source, call=call, options=options, device=device)
    if not report.ok:
        logger.warning("%s", report)
    return module
