"""An in-memory flat state dict as a :class:`Checkpoint`.

A state dict answers the same questions as a file: which names exist, what shape/dtype
each has, and "fill these destination tensors", so load_into has one code path for both.
May be imported by the other reader modules and the layers above ``readers``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from statevault.errors import CheckpointKindError, UnsupportedObjectError
from statevault.readers.base import TensorInfo
from statevault.readers.held import HeldTensors, describe_tensor
from statevault.readers.listing import CheckpointKind

EXTRA_STATE = "_extra_state"  # torch's state_dict key for get_extra_state()
MEMORY_LABEL = "<in-memory state dict>"


def _is_extra_state(key: object) -> bool:
    return isinstance(key, str) and key.rpartition(".")[2] == EXTRA_STATE


class MemoryCheckpoint(HeldTensors):
    """A flat state dict already in memory (e.g. what ``torch.load`` returned); never copied
    or modified."""

    state: Mapping[str, Any]

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> MemoryCheckpoint:
        """Check that ``state`` is a flat name -> tensor dict (extra state allowed)."""
        bad = [
            k
            for k, v in state.items()
            if not isinstance(k, str) or not (isinstance(v, torch.Tensor) or _is_extra_state(k))
        ]
        if bad:
            key = bad[0]
            what = (
                f"has a {type(key).__name__} key"
                if not isinstance(key, str)
                else f"holds a {type(state[key]).__name__}, where a tensor was expected"
            )
            raise UnsupportedObjectError(
                f"state dict entry {key!r} {what}; load_into takes a flat str -> tensor "
                "state dict (use statevault.load(path)['model'] for nested checkpoints)"
            )
        self = cls._blank()
        self.state = state
        self.kind = CheckpointKind.MEMORY
        self.label = MEMORY_LABEL
        self.metadata = {}
        self.aliases = {}
        self.file_size = 0
        return self

    @functools.cached_property
    def tensors(self) -> Mapping[str, TensorInfo]:
        return {
            name: describe_tensor(name, t, "")
            for name, t in self.state.items()
            if isinstance(t, torch.Tensor)
        }

    def keys(self) -> list[str]:
        return [k for k, v in self.state.items() if isinstance(v, torch.Tensor)]

    def mapped(
        self, names: Sequence[str] | None = None, *, verify: bool = True
    ) -> dict[str, torch.Tensor]:
        """A state dict has no file to map: refused, saying what does what was asked."""
        raise CheckpointKindError(
            "mmap=True maps a safetensors file, but the source is a state dict already in "
            "memory: load it without mmap=True (assign=True makes the module use its tensors "
            "instead of copying them)"
        )

    def stored_object(self, key: str) -> tuple[bool, Any]:
        value = self.state.get(key)
        return (key in self.state and not isinstance(value, torch.Tensor)), value

    def torch_versions(self) -> dict[str, Any] | None:
        """The dict's own ``_metadata`` (what ``state_dict()`` attaches), if it has one."""
        versions = getattr(self.state, "_metadata", None)
        return versions if isinstance(versions, dict) else None

    def signature(self, name: str) -> tuple[tuple[int, ...], torch.dtype]:
        tensor = self.state[name]
        return tuple(tensor.shape), tensor.dtype

    def close(self) -> None:
        pass  # the caller's dict: nothing of ours to release

    def held(self, name: str) -> torch.Tensor | None:
        value = self.state.get(name)
        return value if isinstance(value, torch.Tensor) else None
