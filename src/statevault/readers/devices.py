"""Turning a caller's ``device=`` into a torch.device this process can use, or a clear error.

Asked before a byte of data is read. May be imported by ``readers`` and the layers above.
"""

from __future__ import annotations

import torch

from statevault.errors import DeviceUnavailableError, InvalidArgumentError


def usable_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch.device, or a clear error when this process cannot use it."""
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise DeviceUnavailableError(
            f"device={device!r} is not a device torch knows: {exc}"
        ) from None
    if target.type == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError(
            f"device={device!r} was requested, but torch {torch.__version__} sees no CUDA device "
            "(torch.cuda.is_available() is False); load with device='cpu' instead"
        )
    if (
        target.type == "cuda"
        and target.index is not None
        and target.index >= torch.cuda.device_count()
    ):
        raise DeviceUnavailableError(
            f"device={device!r} was requested, but only {torch.cuda.device_count()} CUDA device(s) exist"
        )
    if target.type not in ("cpu", "cuda", "meta"):
        # torch.device() accepts any type name it knows ("xla", "mps", ...) whether or not a
        # backend is there; allocating nothing on it asks, before a byte of data is read.
        try:
            torch.empty(0, device=target)
        except (RuntimeError, NotImplementedError, ImportError, AssertionError) as exc:
            # torch's text goes on to list every backend it has: keep its first sentence
            first = (str(exc).splitlines() or [type(exc).__name__])[0].split(". ")[0]
            raise DeviceUnavailableError(
                f"device={device!r} cannot be used by this process (torch {torch.__version__}: "
                f"{first}); install and initialise its backend, or load with device='cpu'"
            ) from exc
    return target


def mapped_device(device: str | torch.device) -> torch.device:
    """``device`` for an ``mmap=True`` load, which maps the file into CPU memory: the CPU."""
    target = usable_device(device)
    if target.type != "cpu":
        raise InvalidArgumentError(
            f"mmap=True maps the file into CPU memory, but device={device!r} was given: "
            "load with device='cpu' and mmap=True, or without mmap=True to read onto "
            f"{target.type}"
        )
    return target
