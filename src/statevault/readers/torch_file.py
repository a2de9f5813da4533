"""One ``torch.save`` file (``.pt``/``.pth``/``.bin``, zip or legacy) as a :class:`Checkpoint`.

Loaded **only** through ``torch.load(..., weights_only=True)``: a file that loader refuses is
never unpickled, because unpickling can run arbitrary code. Zip files are memory-mapped, so
their tensors are paged in only when read. The object is loaded once, on open, from one
descriptor that torch opens and closes: every later read comes from what it built.

May be imported by the other reader modules and the layers above ``readers``.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from statevault.engine.ties import memory_identity
from statevault.errors import CorruptFileError, UnsupportedObjectError
from statevault.fileformat.tree import Skeleton, flatten
from statevault.readers.base import TensorInfo
from statevault.readers.devices import usable_device
from statevault.readers.held import HeldTensors, describe_tensor
from statevault.readers.listing import CheckpointKind, FolderListing
from statevault.readers.weights_only import WeightsOnlyRefusal, numpy_arrays_allowed


def _refusal(path: Path, exc: Exception) -> WeightsOnlyRefusal:
    # torch's message is long; keep its one informative clause (which global or opcode)
    _, _, after = str(exc).partition("WeightsUnpickler error:")
    detail = next((line.strip() for line in after.splitlines() if line.strip()), "")
    detail = detail.split(" was not an allowed global")[0]
    reason = "torch's weights-only loader refused it" + (f" ({detail})" if detail else "")
    return WeightsOnlyRefusal(
        f"{path}: torch's weights-only loader refused this file"
        + (f" ({detail})" if detail else "")
        + ". statevault does not unpickle it: unpickling can run arbitrary code hidden in the "
        "file. If you trust where it came from, load it yourself with torch.load(path, "
        "weights_only=False), keep only tensors, dicts, lists and numbers, and "
        "statevault.save() that; or allow its classes with torch.serialization.add_safe_globals",
        reason=reason,
    )


def _load_torch(path: Path, *, legacy: bool) -> Any:
    try:
        # mmap keeps a zip checkpoint's tensors on disk until touched; legacy files lack it
        with numpy_arrays_allowed():
            return torch.load(path, map_location="cpu", weights_only=True, mmap=not legacy)
    except pickle.UnpicklingError as exc:
        if "weights only load failed" in str(exc).lower():
            raise _refusal(path, exc) from None
        raise CorruptFileError(
            f"{path}: not a readable PyTorch file ({str(exc).splitlines()[0]}); it is damaged "
            "or in another format"
        ) from None
    except Exception as exc:  # torch's loader fails in many ways on damaged or odd files
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise CorruptFileError(
            f"{path}: torch could not read this file ({type(exc).__name__}: {first}); it is "
            "damaged, truncated, or uses a dtype its format cannot hold (legacy pre-1.6 files "
            "lack uint16/32/64, float8, float4 and complex32 storages)"
        ) from None


class TorchCheckpoint(HeldTensors):
    """A ``torch.save`` file read through the weights-only loader (never plain pickle)."""

    _object: Any
    _tree: Skeleton
    _flat: dict[str, torch.Tensor]
    _tensors: dict[str, TensorInfo]

    @classmethod
    def from_file(
        cls, path: Path, *, legacy: bool, listing: FolderListing | None = None
    ) -> TorchCheckpoint:
        """Load ``path`` with the weights-only loader (``legacy``: the pre-1.6 format)."""
        self = cls._blank()
        self.label = str(path)
        self.kind = CheckpointKind.TORCH_LEGACY if legacy else CheckpointKind.TORCH
        self._listing = listing
        self.file_size = path.stat().st_size
        self._object = _load_torch(path, legacy=legacy)
        self.metadata = {}
        try:
            self._tree, flat = flatten(self._object)
        except UnsupportedObjectError as exc:
            raise UnsupportedObjectError(
                f"{path}: the weights-only loader read it, but part of it cannot be held "
                f"without pickle: {exc}"
            ) from None
        self._flat, self.aliases = _untied(flat)
        self._tensors = {
            name: describe_tensor(name, t, self.label) for name, t in self._flat.items()
        }
        return self

    @property
    def tree(self) -> Skeleton:
        return self._tree

    @property
    def tensors(self) -> Mapping[str, TensorInfo]:
        return self._tensors

    def load(
        self, *, device: str | torch.device = "cpu", verify: bool = True, mmap: bool = False
    ) -> Any:
        if usable_device(device).type == "cpu" and not mmap:
            return self._object  # exactly what the weights-only loader built
        return super().load(device=device, verify=verify, mmap=mmap)  # mmap: refused

    def held(self, name: str) -> torch.Tensor | None:
        return self._flat.get(self.aliases.get(name, name))

    def close(self) -> None:
        self._object = None
        self._flat = {}


def _untied(flat: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The distinct tensors, and every other name sharing memory as an alias of the first
    (tied weights, as ``save`` would store them)."""
    distinct: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    owners: dict[tuple[Any, ...], str] = {}
    for name, tensor in flat.items():
        ident = memory_identity(tensor) if tensor.layout == torch.strided else None
        if ident is not None and ident in owners:
            aliases[name] = owners[ident]
            continue
        if ident is not None:
            owners[ident] = name
        distinct[name] = tensor
    return distinct, aliases
