"""``safe_open`` and its slice handle: a checkpoint read lazily, as safetensors' handle.

May import the readers and the drop-in's ``_errors``; imported by ``statevault.safetensors``.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from statevault.engine.ties import memory_identity
from statevault.errors import InvalidArgumentError
from statevault.readers.base import Checkpoint
from statevault.readers.devices import usable_device
from statevault.readers.slices import TensorSlice
from statevault.safetensors._errors import SafetensorError, SliceIndexError, _as_caught

_FRAMEWORKS = ("pt", "torch", "pytorch")
_BACKENDS = ("mmap", "pread")


def _check_options(framework: str, device: str | int, backend: str) -> torch.device:
    if framework not in _FRAMEWORKS:
        raise SafetensorError(
            f"framework {framework!r} is not supported by statevault.safetensors, which gives "
            'torch tensors: pass framework="pt" (for numpy, flax or tf use the safetensors package)'
        )
    if backend not in _BACKENDS:
        raise SafetensorError(f"backend {backend!r} is invalid; expected one of {_BACKENDS}")
    try:
        return torch.device(device)  # an int is a CUDA index, as safetensors takes it
    except (RuntimeError, TypeError) as exc:
        raise SafetensorError(f"device {device!r} is invalid: {exc}") from None


class safe_open:  # safetensors' name, so the import line is all that changes
    """An open checkpoint, read lazily: ``keys()``, ``metadata()``, ``get_tensor``,
    ``get_slice``. Usable with or without ``with``; ``with`` closes it.

    Example::

        with safe_open("model.safetensors", framework="pt", device="cpu") as f:
            embedding = f.get_tensor("embedding")
            rows = f.get_slice("embedding")[:1000]
    """

    def __init__(
        self,
        filename: str | os.PathLike[str],
        framework: str,
        device: str | int = "cpu",
        *,
        backend: str = "mmap",
    ) -> None:
        self._device = _check_options(framework, device, backend)
        if not isinstance(filename, (str, os.PathLike)):
            raise InvalidArgumentError(
                f"safe_open: filename must be a str or os.PathLike, got {type(filename)!r}"
            )
        with _as_caught():
            self._checkpoint: Checkpoint | None = Checkpoint(filename, weights=True)

    def _open(self) -> Checkpoint:
        if self._checkpoint is None:
            raise SafetensorError("this safe_open file is closed; open it again to read from it")
        return self._checkpoint

    def _known(self, name: str) -> Checkpoint:
        checkpoint = self._open()
        if name not in checkpoint.tensors and name not in checkpoint.aliases:
            raise SafetensorError(
                f"{checkpoint.label}: has no tensor named {name!r} (keys() lists the names)"
            )
        return checkpoint

    def keys(self) -> list[str]:
        """Every tensor name, sorted."""
        return sorted(self._open().keys())

    def offset_keys(self) -> list[str]:
        """Every tensor name in file order (tied names, which have no bytes, last)."""
        return self._open().keys()

    def metadata(self) -> dict[str, str] | None:
        """The caller's str -> str metadata (statevault's own keys left out), or None."""
        return dict(self._open().metadata) or None

    def get_tensor(self, name: str) -> torch.Tensor:
        checkpoint = self._known(name)
        with _as_caught():
            tensor = checkpoint.read([name])[name]
            return tensor if self._device.type == "cpu" else tensor.to(self._usable())

    def get_tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor, read in parallel; tied names share one tensor."""
        with _as_caught():
            tensors = self._open().read()
            if self._device.type == "cpu":
                return tensors
            target = self._usable()
            moved: dict[tuple[Any, ...], torch.Tensor] = {}
            for name, tensor in tensors.items():
                identity = memory_identity(tensor) or (id(tensor),)
                tensors[name] = moved.setdefault(identity, tensor.to(target))
            return tensors

    def get_slice(self, name: str) -> _SafeSlice:
        return _SafeSlice(TensorSlice(self._known(name), name), self._device)

    def _usable(self) -> torch.device:
        return usable_device(self._device)

    def __enter__(self) -> safe_open:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._checkpoint is not None:
            self._checkpoint.close()
            self._checkpoint = None


class _SafeSlice:
    """safetensors' slice handle: any basic index (steps, ``...``, ``None``, negatives).

    The bytes of the smallest step-1 box around the index are read (``TensorSlice``), then
    the index is applied to that box in memory with torch's own semantics.
    """

    def __init__(self, part: TensorSlice, device: torch.device) -> None:
        self._part = part
        self._device = device

    def get_shape(self) -> list[int]:
        return self._part.get_shape()

    def get_dtype(self) -> str:
        return self._part.get_dtype()

    def __getitem__(self, key: Any) -> torch.Tensor:
        box, rest = _box_and_rest(key, self._part.get_shape())
        with _as_caught():
            result = self._part[box][rest]
            return result if self._device.type == "cpu" else result.to(usable_device(self._device))

    def __repr__(self) -> str:
        return repr(self._part)


def _box_and_rest(key: Any, shape: list[int]) -> tuple[tuple[slice, ...], tuple[Any, ...]]:
    """The step-1 box to read, and the index that gives the caller's result from the box."""
    items = list(key) if isinstance(key, tuple) else [key]
    used = sum(1 for item in items if item is not None and item is not Ellipsis)
    if items.count(Ellipsis) > 1:
        raise SliceIndexError("an index can only have a single ellipsis ('...')")
    if used > len(shape):
        raise SliceIndexError(
            f"too many indices ({used}) for a tensor of {len(shape)} dimension(s)"
        )
    if Ellipsis in items:
        at = items.index(Ellipsis)
        items[at : at + 1] = [slice(None)] * (len(shape) - used)
    box: list[slice] = []
    rest: list[Any] = []
    dim = 0
    for item in items:
        if item is None:
            rest.append(None)
            continue
        size = shape[dim]
        if isinstance(item, slice):
            start, stop, step = item.indices(size)
            if step <= 0:
                raise InvalidArgumentError(f"slice step must be greater than zero, got {step}")
            box.append(slice(start, max(start, stop)))
            rest.append(slice(None, None, step))
        elif isinstance(item, int) and not isinstance(item, bool):
            if not -size <= item < size:
                raise SliceIndexError(
                    f"index {item} is out of bounds for dimension {dim} with size {size}"
                )
            box.append(slice(item % size, item % size + 1))
            rest.append(0)
        else:
            raise InvalidArgumentError(
                f"get_slice takes integers, slices, '...' and None, got {item!r}"
            )
        dim += 1
    return tuple(box), tuple(rest)
