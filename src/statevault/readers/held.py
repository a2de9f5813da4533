"""Checkpoints whose tensors are objects in memory already: a caller's state dict, or what
torch's weights-only loader built from a ``.pt`` file. Filling, reading and chunking are
look-ups by name; the subclass says where a name's tensor is (``held``).

May be imported by the reader modules of such checkpoints (``in_memory``, ``torch_file``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch

from statevault.engine.progress import Progress
from statevault.fileformat.dtypes import spec_for
from statevault.readers.base import Checkpoint, TensorInfo, tensor_chunks


def describe_tensor(name: str, tensor: torch.Tensor, file: str) -> TensorInfo:
    """What a held tensor would be in a file: its dtype code (None when it has none)."""
    spec = spec_for(tensor.dtype)
    code = spec.code if spec is not None else None
    nbytes = tensor.numel() * tensor.element_size()
    return TensorInfo(name, tensor.dtype, tuple(tensor.shape), nbytes, code, None, file)


class HeldTensors(Checkpoint):
    """The reads of a checkpoint that holds its tensors; ``held(name)`` finds one."""

    def held(self, name: str) -> torch.Tensor | None:
        """The tensor stored as ``name`` (an alias resolved), or None when there is none."""
        raise NotImplementedError

    def _tensor(self, name: str) -> torch.Tensor:
        tensor = self.held(name)
        if tensor is None:
            raise KeyError(f"{self.label}: no tensor named {name!r}")
        return tensor

    def fill(
        self,
        pairs: Iterable[tuple[str, torch.Tensor]],
        *,
        verify: bool,
        dtypes_match: bool = False,
    ) -> None:
        with torch.no_grad():
            for name, dest in pairs:
                dest.copy_(self._tensor(name))

    def read(
        self,
        names: Sequence[str] | None = None,
        *,
        verify: bool = True,
        progress: Progress | None = None,
    ) -> dict[str, torch.Tensor]:
        wanted = self.keys() if names is None else list(names)
        result = {name: self._tensor(name) for name in wanted}
        if progress is not None:
            progress.advance(sum(t.numel() * t.element_size() for t in result.values()))
        return result

    def chunks(self, name: str, *, elements: int, verify: bool = True) -> Iterator[torch.Tensor]:
        return tensor_chunks(self._tensor(name), elements)
