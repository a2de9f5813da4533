"""``mmap=True`` loads: the module's tensors become views of the checkpoint's file mapping.

A normal load fills the module's own memory. A mapped one replaces each matched parameter
and buffer with a view of the file's private, copy-on-write mapping
(:meth:`Checkpoint.mapped`), the way ``assign=True`` replaces them with fresh tensors:
parameters stay parameters and keep ``requires_grad``, tied tensors stay one tensor, meta
tensors are replaced too (that is ``build_model``'s path), and the module keeps its dtypes
(a tensor stored in another dtype is cast: a copy). Nothing is allocated or filled for the
matched tensors, so processes serving one model share one copy of its weights: the page
cache's. Everything is checked (device, digests) before the first tensor is replaced.
Modules that customise loading go through torch's ``load_state_dict(assign=True)`` with the
mapped tensors instead (``loading.fill``).

May import: ``loading.plan``, ``readers``, ``reports``, ``statevault.errors``. Imported by
``loading.load_into``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import torch
from torch import nn

from statevault.errors import InvalidArgumentError, StateVaultError
from statevault.loading.plan import LoadPlan
from statevault.readers.base import Checkpoint
from statevault.reports.load_report import LoadReport, capped

# (state_dict key, owner module, attribute, tensor, is a parameter)
_Slot = tuple[str, nn.Module, str, torch.Tensor, bool]


def _slots(module: nn.Module) -> Iterator[_Slot]:
    """Every parameter and persistent buffer, once per owner (a tie is listed per owner)."""
    for prefix, owner in module.named_modules(remove_duplicate=False):
        dot = f"{prefix}." if prefix else ""
        for attr, param in owner._parameters.items():
            if param is not None:
                yield dot + attr, owner, attr, param, True
        for attr, buffer in owner._buffers.items():
            if buffer is not None and attr not in owner._non_persistent_buffers_set:
                yield dot + attr, owner, attr, buffer, False


def bind_mapped(
    module: nn.Module, planned: LoadPlan, source: Checkpoint, verify: bool
) -> LoadReport:
    """Make every matched tensor of ``module`` a view of ``source``'s mapping."""
    report = planned.report
    names = {key: name for key, name, _ in planned.sources(planned.model)}
    slots = list(_slots(module))
    # a tensor under several keys (a tie) gets the last key's value, as a fill writes it last
    winner = {id(tensor): key for key, _, _, tensor, _ in slots if key in names}
    for key, _, _, tensor, _ in slots:
        if id(tensor) in winner and not (tensor.is_cpu or tensor.is_meta):
            raise InvalidArgumentError(
                f"{report.source}: mmap=True makes the model's tensors views of the file in "
                f"CPU memory, but '{key}' is on {tensor.device}: load without mmap=True, or "
                "move the model to the CPU first (model.cpu())"
            )
    listed = {key for key, *_ in slots}
    unbound = [key for key in names if key not in listed]
    if unbound:  # a state_dict override names tensors that are no module's attribute
        raise StateVaultError(
            f"{report.source}: mmap=True found no parameter or buffer behind "
            f"{', '.join(capped(unbound))} (the module customises state_dict): load without "
            "mmap=True"
        )
    mapped = source.mapped(list(dict.fromkeys(names.values())), verify=verify)
    built: dict[int, torch.Tensor] = {}
    cast: list[str] = []
    for _, owner, attr, tensor, is_param in slots:
        chosen = winner.get(id(tensor))
        if chosen is None:
            continue
        new = built.get(id(tensor))
        if new is None:
            data = mapped[names[chosen]]
            if data.dtype != tensor.dtype:  # the module keeps its dtype: a copy
                data = data.to(tensor.dtype)
                cast.append(chosen)
            new = _wrapped(data, tensor)
            built[id(tensor)] = new
        if is_param:
            owner._parameters[attr] = new  # type: ignore[assignment]
        else:
            owner._buffers[attr] = new
    note = f"mmap=True: {len(built) - len(cast)} tensor(s) are views of the file's mapping"
    if cast:
        note += (
            f"; {len(cast)} copied to cast them to the model's dtype ({', '.join(capped(cast, 3))})"
        )
    return replace(report, notes=(*report.notes, note))


def _wrapped(data: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """``data`` as what ``old`` was: a Parameter keeping its ``requires_grad``, or a tensor."""
    if isinstance(old, nn.Parameter):
        return nn.Parameter(data, requires_grad=old.requires_grad)
    return data
