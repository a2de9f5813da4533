"""Consistent snapshots of training state for async saves, in bounded, reused host memory.

``save(blocking=False)`` must return before the state is written, yet training may change
the live tensors right after. So the state is copied first: every tensor into one slot of a
:class:`StagingArea` (a host buffer, pinned where CUDA is present so GPU tensors copy by
DMA), and the containers around them rebuilt, so the background writer sees the state as it
was when ``save`` was called. The area has one slot per save allowed in flight; taking a
slot blocks while all are busy (back-pressure instead of unbounded memory), and a slot's
buffer is kept for the next save (no allocation, no page faults in steady state), growing
only when the state grows.

Tensors that are the same view of the same memory (tied weights) are copied once and stay
one tensor, so the file is the same as a synchronous save of the same state would write.

Imported by ``statevault.manager.manager`` only.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from copy import deepcopy
from typing import Any

import torch

from statevault.errors import UnsupportedObjectError

ALIGNMENT = 64  # bytes; every staged tensor starts on a cache line (and any dtype's alignment)
_SCALARS = (str, int, float, bool, type(None))


def _where(path: tuple[object, ...]) -> str:
    return ".".join(map(str, path)) or "<root>"


def _identity(tensor: torch.Tensor) -> tuple[Any, ...]:
    """Equal for two tensors that view the same memory the same way (as save's tie check)."""
    return (
        tensor.device,
        tensor.data_ptr(),
        tuple(tensor.shape),
        tensor.stride(),
        tensor.dtype,
        tensor.is_conj(),
        tensor.is_neg(),
    )


def _check_tensor(tensor: torch.Tensor, path: tuple[object, ...]) -> None:
    """Refuse now what the background save would refuse later (it cannot be copied as bytes)."""
    if type(tensor) in (torch.Tensor, torch.nn.Parameter) and not (
        tensor.layout is not torch.strided
        or tensor.is_nested
        or tensor.is_quantized
        or tensor.is_meta
    ):
        return
    raise UnsupportedObjectError(
        f"{_where(path)}: cannot snapshot this tensor for an async save ({type(tensor).__name__}, "
        f"{tensor.layout}, dtype {tensor.dtype}); statevault stores plain dense tensors. "
        "save(..., blocking=True) names the exact reason and fix"
    )


class _Collector:
    """First pass: the distinct tensors of a state and where each goes in a slot."""

    def __init__(self) -> None:
        self.offsets: dict[tuple[Any, ...], int] = {}
        self.tensors: list[tuple[torch.Tensor, int]] = []
        self.size = 0

    def visit(self, value: Any, path: tuple[object, ...]) -> None:
        if isinstance(value, torch.Tensor):
            _check_tensor(value, path)
            if value.numel() == 0:
                return
            key = _identity(value)
            if key not in self.offsets:
                offset = -(-self.size // ALIGNMENT) * ALIGNMENT
                self.offsets[key] = offset
                self.tensors.append((value, offset))
                self.size = offset + value.nbytes
        elif type(value) in (dict, OrderedDict):
            for key, item in value.items():
                self.visit(item, (*path, key))
        elif type(value) in (list, tuple):
            for index, item in enumerate(value):
                self.visit(item, (*path, index))


class _Rebuilder:
    """Second pass: the same containers around staged copies of the tensors."""

    def __init__(self, buffer: torch.Tensor, offsets: dict[tuple[Any, ...], int]) -> None:
        self.buffer = buffer
        self.offsets = offsets
        self.views: dict[int, torch.Tensor] = {}

    def staged(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.numel() == 0:
            return torch.empty(tensor.shape, dtype=tensor.dtype)
        offset = self.offsets[_identity(tensor)]
        view = self.views.get(offset)
        if view is None:
            raw = self.buffer[offset : offset + tensor.nbytes]
            view = raw.view(tensor.dtype).view(tensor.shape)
            with torch.no_grad():
                view.copy_(tensor, non_blocking=tensor.is_cuda)
            self.views[offset] = view
        return view

    def visit(self, value: Any, path: tuple[object, ...]) -> Any:
        if isinstance(value, torch.Tensor):
            return self.staged(value)
        if isinstance(value, _SCALARS) or type(value) is torch.Size:
            return value  # immutable
        if type(value) in (dict, OrderedDict):
            copy = type(value)((key, self.visit(item, (*path, key))) for key, item in value.items())
            versions = getattr(value, "_metadata", None)
            if type(value) is OrderedDict and versions is not None:
                copy._metadata = deepcopy(versions)  # state_dict()'s module versions ride along
            return copy
        if type(value) is list:
            return [self.visit(item, (*path, i)) for i, item in enumerate(value)]
        if type(value) is tuple:
            return tuple(self.visit(item, (*path, i)) for i, item in enumerate(value))
        numpy = sys.modules.get("numpy")
        if numpy is not None and isinstance(value, numpy.generic):
            return value  # numpy scalars are immutable
        if numpy is not None and type(value) is numpy.ndarray:
            return value.copy()  # small (RNG states); copied here, not staged
        raise UnsupportedObjectError(
            f"{_where(path)}: cannot store {type(value)!r} without pickle. statevault stores "
            "tensors, dicts (str/int keys), lists, tuples, int, float, bool, str, None and "
            "numpy values; convert this value to one of those"
        )


class StagingArea:
    """``slots`` reusable host buffers; one per save in flight."""

    def __init__(self, slots: int, *, pin: bool | None = None) -> None:
        self._pin = torch.cuda.is_available() if pin is None else pin
        self._free: list[torch.Tensor] = [torch.empty(0, dtype=torch.uint8) for _ in range(slots)]
        self._available = threading.Condition()

    def acquire(self) -> torch.Tensor:
        """A free slot's buffer; blocks while every slot holds a save in flight."""
        with self._available:
            self._available.wait_for(lambda: bool(self._free))
            return self._free.pop()

    def release(self, buffer: torch.Tensor) -> None:
        with self._available:
            self._free.append(buffer)
            self._available.notify()

    def capacity(self) -> int:
        """Bytes held by the free slots (for tests and the benchmark)."""
        with self._available:
            return sum(buffer.numel() for buffer in self._free)

    def stage(self, state: Any, buffer: torch.Tensor) -> tuple[Any, torch.Tensor]:
        """A copy of ``state`` whose tensors live in ``buffer`` (grown when too small).

        Returns the copy and the buffer to hand back with :meth:`release`. Returns once
        every copy is complete, GPU ones included.
        """
        if isinstance(state, torch.nn.Module):
            state = state.state_dict()
        collector = _Collector()
        try:
            collector.visit(state, ())
        except RecursionError:
            raise UnsupportedObjectError(
                "state is nested too deeply to store; flatten it, or check it for a container "
                "that contains itself"
            ) from None
        if buffer.numel() < collector.size:
            del buffer  # the old buffer is freed before the bigger one is allocated
            buffer = torch.empty(collector.size, dtype=torch.uint8, pin_memory=self._pin)
        staged = _Rebuilder(buffer, collector.offsets).visit(state, ())
        devices = {tensor.device for tensor, _ in collector.tensors if tensor.is_cuda}
        for device in devices:
            torch.cuda.current_stream(device).synchronize()
        return staged, buffer
