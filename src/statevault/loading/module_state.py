"""A module's tensors by state_dict key, listed on demand instead of kept in a table.

``module.state_dict(keep_vars=True)`` builds an OrderedDict with a fresh key string per
tensor and a ``_metadata`` table: for 20,000 tensors 5.5 MiB (memray), which load_into held
through the whole load only to learn which tensor each key names. When no module changes
what state_dict returns, walking the modules lists the very same (key, tensor) pairs in the
same order, and each key string lives only while it is looked at. Otherwise state_dict()
itself is asked, as before.

May import: torch only. Imported by ``loading.plan``, ``loading.fill`` and
``loading.load_into``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Protocol

import torch
from torch import nn


class ModelState(Protocol):
    """What load_into asks of the model's state: a dict, or a ``Walk`` that lists it again.

    ``items()`` may be called more than once; each call lists every pair afresh.
    """

    def keys(self) -> Collection[str]: ...

    def items(self) -> Iterable[tuple[str, torch.Tensor]]: ...


def submodules(root: nn.Module) -> Iterator[nn.Module]:
    """``root`` and every module under it; one reached twice is listed twice.

    For checks that look at each module alone, where ``module.modules()`` and its table of
    modules already seen cost 4 ms for 10,000 modules and this 0.6 ms.
    """
    stack = [root]
    while stack:
        module = stack.pop()
        yield module
        if module._modules:
            stack.extend(child for child in module._modules.values() if child is not None)


def _class_changes_state_dict(cls: type[nn.Module]) -> bool:
    """True when the class overrides what state_dict lists."""
    default = nn.Module
    return (
        cls.state_dict is not default.state_dict
        or cls._save_to_state_dict is not default._save_to_state_dict
        # torch adds an "_extra_state" key when the class overrides get_extra_state
        or getattr(cls, "get_extra_state", default.get_extra_state) is not default.get_extra_state
    )


def any_module(
    root: nn.Module,
    *,
    instance: Callable[[nn.Module], bool],
    by_class: Callable[[type[nn.Module]], bool],
) -> bool:
    """True when some module under ``root`` passes ``instance``, or its class ``by_class``.

    Each class is asked once: this runs over every module of every load (10,000 modules:
    ~2 ms, against ~6 ms asking per module through ``module.modules()``).
    """
    classes: dict[type[nn.Module], bool] = {}
    for module in submodules(root):
        if instance(module):
            return True
        cls = type(module)
        found = classes.get(cls)
        if found is None:
            found = classes[cls] = by_class(cls)
        if found:
            return True
    return False


def _instance_changes_state_dict(module: nn.Module) -> bool:
    own = vars(module)
    if (
        module._state_dict_hooks
        or module._state_dict_pre_hooks
        or "state_dict" in own  # replaced on the instance
        or "_save_to_state_dict" in own
    ):
        return True
    # A dotted module name could make two keys equal, which state_dict() would merge.
    # Parameter and buffer names are not checked: torch refuses dots in them when they are
    # registered, and checking costs 4 ms per 10,000 modules on every load.
    # .keys(): a TorchScript module's _modules cannot be iterated directly.
    children = module._modules
    return bool(children and "." in "".join(children.keys()))


def walkable(root: nn.Module) -> bool:
    """True when ``Walk(root)`` lists exactly what ``root.state_dict(keep_vars=True)`` does.

    That is, no module has state_dict hooks or overrides (on its class or on itself), and
    no module name has a dot: torch checks parameter and buffer names when they are
    registered, but ``setattr(module, "a.b", child)`` stores a dotted module name, whose keys
    could equal other keys that state_dict() would then merge.
    """
    return not any_module(
        root, instance=_instance_changes_state_dict, by_class=_class_changes_state_dict
    )


def _walk(root: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """torch's ``Module.state_dict`` and ``_save_to_state_dict`` order, without the dict.

    Depth first with a stack of child iterators rather than recursive generators, which
    hand every pair up through each level: 5 ms instead of 9 ms for 20,000 tensors.
    """
    stack: list[tuple[str, Iterator[tuple[str, nn.Module | None]]]] = []
    prefix, module = "", root
    while True:
        for name, param in module._parameters.items():
            if param is not None:
                yield prefix + name, param
        if module._buffers:
            non_persistent = module._non_persistent_buffers_set
            for name, buffer in module._buffers.items():
                if buffer is not None and name not in non_persistent:
                    yield prefix + name, buffer
        if module._modules:
            stack.append((prefix, iter(module._modules.items())))
        # the next module in torch's order: the next child of the innermost unfinished parent
        while stack:
            parent, children = stack[-1]
            for name, child in children:
                if child is not None:
                    prefix, module = parent + name + ".", child
                    break
            else:  # that parent is done
                stack.pop()
                continue
            break
        else:  # every module is done
            return


class _WalkKeys(Collection[str]):
    """The keys of a walk; counting or searching them walks the model (map_keys does not)."""

    def __init__(self, module: nn.Module) -> None:
        self._module = module

    def __iter__(self) -> Iterator[str]:
        return (key for key, _ in _walk(self._module))

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __contains__(self, key: object) -> bool:
        return any(key == k for k in self)


class Walk:
    """``module.state_dict(keep_vars=True)`` as a listing: ``items()`` walks the modules.

    Every listing sees the module as it is then (after ``module.to(dtype)`` too), and
    costs ~5 ms for 20,000 tensors, where building state_dict() costs ~18 ms.
    """

    def __init__(self, module: nn.Module) -> None:
        self._module = module

    def keys(self) -> Collection[str]:
        return _WalkKeys(self._module)

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        return _walk(self._module)


def model_state(module: nn.Module) -> ModelState:
    """The module's state as load_into lists it: a ``Walk`` when that is exact, else state_dict."""
    if walkable(module):
        return Walk(module)
    return module.state_dict(keep_vars=True)
