"""Initialise tensors a checkpoint does not fill the way the model's constructor would.

For ``build_model`` / ``materialize`` with ``strict=False``: the model's parameters were
never initialised (built on meta), so whatever the file does not fill gets the owning
module's ``reset_parameters()`` and the enclosing ``_init_weights(module)`` where there is
one, never uninitialised memory.

May import: ``reports``, ``statevault.errors``. Imported by ``loading.build``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Collection, Mapping
from typing import Any

import torch
from torch import nn

from statevault.errors import StateVaultError
from statevault.reports.load_report import capped


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


def initialise(
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
