"""Build a module without initialising its weights, then fill it from a checkpoint.

The tutorial flow ``model = Model(); model.load_state_dict(torch.load(path))`` spends most
of its time on random initialisation that the load then overwrites, and holds the weights
twice. Here parameters are created on the meta device while the module is built (no memory,
init functions become no-ops), then each one gets uninitialised memory once and is read
straight from the file into it: ~1x memory, no wasted init.

Only *parameters* go to meta. Buffers are built for real, so tables computed in ``__init__``
and not saved (rotary/positional tables, masks) keep their correct values. Anything still on
meta after loading is an error, never silently left behind.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, TypeVar

import torch
from torch import nn
from torch.nn.modules.module import register_module_parameter_registration_hook
from torch.overrides import TorchFunctionMode

from statevault._checkpoint import usable_device
from statevault._io import advise_huge_pages
from statevault._load_into import load_into
from statevault._open import Source, open_source
from statevault._report import LoadReport, capped
from statevault.errors import StateVaultError

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


def _meta_slots(module: nn.Module) -> list[tuple[str, nn.Module, str, nn.Parameter]]:
    """Every (qualified name, owner, attribute, parameter) whose parameter is on meta.

    Tied parameters appear once per owner, so each owner's slot can be refilled.
    """
    slots = []
    for prefix, owner in module.named_modules(remove_duplicate=False):
        for attr, param in owner._parameters.items():
            if param is not None and param.is_meta:
                slots.append((f"{prefix}.{attr}" if prefix else attr, owner, attr, param))
    return slots


def _still_on_meta(module: nn.Module) -> list[str]:
    names = [n for n, p in module.named_parameters(remove_duplicate=False) if p.is_meta]
    return names + [n for n, b in module.named_buffers(remove_duplicate=False) if b.is_meta]


def _allocate(module: nn.Module, device: torch.device) -> list[str]:
    """Give every meta parameter uninitialised memory; ties stay ties. Returns their names."""
    fresh: dict[int, nn.Parameter] = {}
    names = []
    slots = _meta_slots(module)  # holds the meta parameters, so their ids stay unique
    for name, owner, attr, param in slots:
        if id(param) not in fresh:
            data = torch.empty(param.shape, dtype=param.dtype, device=device)
            advise_huge_pages(data)  # fresh memory about to be filled: 512x fewer page faults
            fresh[id(param)] = type(param)(data, requires_grad=param.requires_grad)
        owner._parameters[attr] = fresh[id(param)]
        names.append(name)
    return names


def _initialise_missing(module: nn.Module, missing: set[str], source: str) -> list[str]:
    """Run ``reset_parameters()`` of modules owning parameters the checkpoint lacks."""
    owners: dict[int, tuple[str, nn.Module]] = {}
    unfixable = []
    for prefix, owner in module.named_modules(remove_duplicate=False):
        for attr in owner._parameters:
            name = f"{prefix}.{attr}" if prefix else attr
            if name not in missing:
                continue
            if callable(getattr(owner, "reset_parameters", None)):
                owners[id(owner)] = (prefix, owner)
            else:
                unfixable.append(name)
    if unfixable:
        raise StateVaultError(
            f"{source}: parameter(s) missing from the checkpoint and their module has no "
            f"reset_parameters() to initialise them: {', '.join(capped(unfixable))}. Build the "
            "model normally and use statevault.load_into(model, path, strict=False) instead"
        )
    with torch.no_grad():
        for _, owner in owners.values():
            owner.reset_parameters()  # type: ignore[operator]
    return sorted(prefix or "<root>" for prefix, _ in owners.values())


def materialize(
    module: nn.Module,
    path: Source,
    *,
    strict: bool = True,
    verify: bool = True,
    device: str | torch.device = "cpu",
) -> LoadReport:
    """Give a :func:`skip_init`-built module real parameters, read straight from ``path``.

    Each parameter is allocated once on ``device`` and filled in place (ties kept). With
    ``strict=True`` missing, unexpected or mismatched keys raise
    :class:`StateDictMismatchError`. With ``strict=False`` parameters missing from the file
    are initialised by their module's ``reset_parameters()`` and the report says so.
    """
    checkpoint, owned = open_source(path)
    try:
        target = usable_device(device)
        allocated = _allocate(module, target)
        in_file = set(checkpoint.keys())
        missing = {name for name in allocated if name not in in_file}
        notes: list[str] = []
        if missing and not strict:
            owners = _initialise_missing(module, missing, checkpoint.label)
            notes.append(
                "not in the checkpoint, initialised by reset_parameters(): "
                + ", ".join(capped(sorted(missing)))
                + f" (modules: {', '.join(capped(owners))})"
            )
        report = load_into(module, checkpoint, strict=strict, verify=verify)
    finally:
        if owned:
            checkpoint.close()
    left = _still_on_meta(module)
    if left:
        raise StateVaultError(
            f"{checkpoint.label}: still on the meta device after loading: "
            f"{', '.join(capped(left))}. A buffer computed from a parameter in __init__ cannot be "
            "built without weights; build the model normally and use statevault.load_into"
        )
    return replace(report, notes=(*report.notes, *notes)) if notes else report


def load_model(
    factory: Callable[..., M],
    path: Source,
    /,
    *args: Any,
    strict: bool = True,
    verify: bool = True,
    device: str | torch.device = "cpu",
    **kwargs: Any,
) -> M:
    """Build ``factory(*args, **kwargs)`` without weight init and load ``path`` into it.

    Several times faster than ``Model()`` followed by ``load_state_dict``, with the weights
    in memory once. ``args``/``kwargs`` go to ``factory``; ``strict``, ``verify`` and
    ``device`` are ours (use ``functools.partial`` if your constructor takes those names).

    Example::

        model = statevault.load_model(Transformer, "model.safetensors", dim=512, layers=8)
    """
    with skip_init():
        module = factory(*args, **kwargs)
    if not isinstance(module, nn.Module):
        raise StateVaultError(
            f"load_model: {factory!r} returned {type(module).__name__}, not a torch.nn.Module"
        )
    report = materialize(module, path, strict=strict, verify=verify, device=device)
    if not report.ok:
        logger.warning("%s", report)
    return module
