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
its shape) is initialised the way the module itself initialises it, as ``Model()`` would have.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, TypeVar

import torch
from torch import nn
from torch.nn.modules.module import register_module_parameter_registration_hook
from torch.overrides import TorchFunctionMode

from statevault.engine.memory import advise_huge_pages
from statevault.errors import StateVaultError, UnsupportedObjectError
from statevault.loading.diagnose import Call
from statevault.loading.keymap import Rename
from statevault.loading.load_into import LoadOptions, describe_call, load_with, require_instance
from statevault.readers.dispatch import Source
from statevault.readers.safetensors_file import usable_device
from statevault.reports.load_report import LoadReport, capped

logger = logging.getLogger("statevault")
M = TypeVar("M", bound=nn.Module)


def _parameter_to_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> Any:
    if param is None or param.is_meta:
        return None  # keep it (a tied parameter registered a second time is already meta)
    return type(param)(param.to("meta"), requires_grad=param.requires_grad)


# In-place fills that weight-init functions run; on a meta tensor they change nothing, but
# some (normal_) go through torch's Python reference kernels whose first use imports
# torch._dynamo: measured 1.6 s on the first load_model of a process.
_FILLS = frozenset(
    {"normal_", "uniform_", "fill_", "zero_", "random_", "bernoulli_", "exponential_",
     "geometric_", "log_normal_", "cauchy_", "erfinv_", "clamp_", "mul_", "add_", "sub_",
     "div_", "copy_", "fmod_", "abs_", "sqrt_", "neg_"}
)  # fmt: skip


class _SkipMetaFills(TorchFunctionMode):
    """Return meta tensors from in-place fills untouched instead of dispatching them."""

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        # nn.init functions forward their tensor as a keyword (``tensor=``)
        first = args[0] if args else kwargs.get("tensor", kwargs.get("input"))
        if (
            getattr(func, "__name__", "") in _FILLS
            and isinstance(first, torch.Tensor)
            and first.is_meta
        ):
            return first
        return func(*args, **kwargs)


@contextmanager
def skip_init() -> Iterator[None]:
    """Modules built inside get their parameters on the meta device: no memory, no init.

    Buffers are created normally. Fill the module with :func:`materialize` afterwards. The
    hook behind this is process-wide, so do not build other modules in other threads
    meanwhile (their parameters would land on meta too).

    Example::

        with statevault.skip_init():
            model = Model(dim=4096)
        statevault.materialize(model, "model.safetensors")
    """
    handle = register_module_parameter_registration_hook(_parameter_to_meta)
    try:
        with _SkipMetaFills():
            yield
    finally:
        handle.remove()


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
            advise_huge_pages(data)  # fresh memory about to be filled: 512x fewer page faults
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


def _takes_one_module(method: Callable[..., Any]) -> bool:
    try:
        parameters = list(inspect.signature(method).parameters.values())
    except (TypeError, ValueError):
        return False
    return len(parameters) == 1 and parameters[0].kind in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    )


def _initialisers(
    modules: Mapping[str, nn.Module], prefix: str
) -> list[tuple[str, Callable[[], Any]]]:
    """How the module at ``prefix`` gets its tensors' values when the model is constructed.

    Its own ``reset_parameters()`` (what torch modules call in ``__init__``), then the
    nearest enclosing model's ``_init_weights(module)`` where there is one: transformers
    models (and others with that convention) run it over every submodule after building
    them, overriding the submodule's own initialisation. Empty when neither exists.
    """
    owner = modules[prefix]
    steps: list[tuple[str, Callable[[], Any]]] = []
    reset = getattr(owner, "reset_parameters", None)
    if callable(reset):
        steps.append(("reset_parameters()", reset))
    parts = prefix.split(".") if prefix else []
    for depth in range(len(parts), -1, -1):
        outer = modules[".".join(parts[:depth])]
        init_weights = getattr(outer, "_init_weights", None)
        if callable(init_weights) and _takes_one_module(init_weights):
            name = f"{type(outer).__name__}._init_weights()"
            steps.append((name, functools.partial(init_weights, owner)))
            break
    return steps


def _initialise(
    module: nn.Module, keys: Collection[str], fresh: Mapping[str, torch.Tensor], source: str
) -> tuple[list[str], list[str]]:
    """Initialise freshly allocated tensors the checkpoint will not fill, as the module would.

    Each is first filled with NaN (zeros if not floating point), so that one the module's own
    initialisation does not write is caught instead of handed out. Returns the report notes
    and the keys initialised.
    """
    modules = dict(module.named_modules(remove_duplicate=False))
    by_owner: dict[str, list[str]] = {}
    for key in keys:
        by_owner.setdefault(key.rpartition(".")[0], []).append(key)
    plans: dict[str, list[str]] = {}  # how -> keys
    runs = []
    unfixable = []
    for prefix, owned in by_owner.items():
        steps = _initialisers(modules, prefix)
        if not steps:
            unfixable += owned
            continue
        plans.setdefault(" then ".join(how for how, _ in steps), []).extend(owned)
        runs += [run for _, run in steps]
    if unfixable:
        raise StateVaultError(
            f"{source}: not filled from the checkpoint, and their module has neither "
            f"reset_parameters() nor an enclosing _init_weights(module) to initialise them: "
            f"{', '.join(capped(unfixable))}. Build the model normally and use "
            "statevault.load_into(model, path, strict=False) instead"
        )
    with torch.no_grad():
        for key in keys:
            tensor = fresh[key]
            tensor.fill_(float("nan")) if tensor.is_floating_point() else tensor.zero_()
        for run in runs:
            run()
    unwritten = [k for k in keys if fresh[k].is_floating_point() and fresh[k].isnan().any()]
    if unwritten:
        raise StateVaultError(
            f"{source}: not filled from the checkpoint, and their module's initialisation did "
            f"not write them: {', '.join(capped(unwritten))}. Build the model normally and use "
            "statevault.load_into(model, path, strict=False) instead"
        )
    notes = [
        f"not loaded, initialised by {how}: {', '.join(capped(sorted(names)))}"
        for how, names in plans.items()
    ]
    return notes, sorted(keys)


# the load options build_model and materialize take (load_into's, less dry_run and assign)
_BUILD_OPTIONS = ("strict", "verify", "prefix", "strip_prefix", "rename", "auto_fix", "dtype")


def _materialize(
    module: nn.Module,
    source: Source,
    *,
    call: Call,
    options: LoadOptions,
    device: str | torch.device,
) -> LoadReport:
    require_instance(module, call)
    strict, dtype = options.strict, options.dtype
    target = usable_device(device)
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        module.to(dtype)  # on meta parameters: free, and each is allocated once in that dtype
    slots = _meta_slots(module)
    fresh = _allocate(slots, target)
    notes: list[str] = []
    initialised: list[str] = []

    def load(*, dry_run: bool) -> LoadReport:
        return load_with(module, source, call=call, options=replace(options, dry_run=dry_run))

    try:
        if not strict:  # initialise first: what the file then fills is overwritten
            planned = load(dry_run=True)
            todo = [k for k in (*planned.missing, *planned.skipped) if k in fresh]
            if todo:
                notes, initialised = _initialise(module, todo, fresh, planned.source)
        report = load(dry_run=False)
        unfilled = [
            k for k in (*report.missing, *report.skipped) if k in fresh and k not in initialised
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
    strip_prefix: str | None = None,
    rename: Rename | None = None,
    auto_fix: bool = True,
    dtype: torch.dtype | None = None,
) -> LoadReport:
    """Give a module's meta parameters (and persistent buffers) real memory, filled from ``source``.

    For a module built under :func:`skip_init`, or moved with ``.to("meta")``. Each tensor is
    allocated once on ``device`` and filled in place (ties kept); the options are
    :func:`load_into`'s. With ``strict=True`` missing, unexpected or mismatched keys raise
    :class:`StateDictMismatchError`. With ``strict=False`` tensors the file does not fill
    (missing, or skipped for their shape) get the module's own initialisation (see
    :func:`build_model`) and ``report.initialised`` lists them. On any error the module is
    left as it was, on meta.
    """
    options = LoadOptions(strict, verify, prefix, strip_prefix, rename, auto_fix, dtype)
    given = {**options.given(*_BUILD_OPTIONS), "device": device}
    call = describe_call("materialize", "model", source, given)
    return _materialize(module, source, call=call, options=options, device=device)


def _factory_name(factory: object) -> str:
    """How a printed fix names the factory: its (qualified) name, or ``factory`` for lambdas."""
    for attribute in ("__qualname__", "__name__"):
        name = getattr(factory, attribute, "")
        if isinstance(name, str) and name and all(p.isidentifier() for p in name.split(".")):
            return name
    return "factory"


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
    strip_prefix: str | None = None,
    rename: Rename | None = None,
    auto_fix: bool = True,
    dtype: torch.dtype | None = None,
) -> M:
    """Build ``factory(*args, **kwargs)`` without weight init and load ``source`` into it.

    Several times faster than ``Model()`` followed by ``load_state_dict``, with the weights
    in memory once. ``factory`` is the model class or any callable returning a module;
    constructor arguments go in ``args``/``kwargs`` so they never clash with the load options,
    which are :func:`load_into`'s plus ``device``. With ``strict=False`` every tensor the file
    does not fill (missing, or skipped because its shape differs, e.g. a new classification
    head) is initialised as the model's constructor would have: by the enclosing
    transformers-style ``_init_weights(module)`` where the model has one, otherwise by the
    module's ``reset_parameters()``; never left as uninitialised memory. The report is logged
    as a warning when it is not clean (use :func:`skip_init` + :func:`materialize` to get it).

    Example::

        model = statevault.build_model(Transformer, "model.safetensors", kwargs={"dim": 512})
    """
    options = LoadOptions(strict, verify, prefix, strip_prefix, rename, auto_fix, dtype)
    given = {
        "args": tuple(args) if isinstance(args, list) else args,
        "kwargs": kwargs,
        **options.given(*_BUILD_OPTIONS),
        "device": device,
    }
    call = describe_call("build_model", _factory_name(factory), source, given)
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
