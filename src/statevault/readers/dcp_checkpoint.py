"""A directory written by ``statevault.dcp.Writer`` as one :class:`Checkpoint` of full tensors.

Needs no ``torch.distributed``: the JSON index (``fileformat.dcp_index``) says which
chunks make up each tensor and where each is stored; reading a tensor reads its chunks
(verified) from the rank files and places them in one tensor of the global shape. The
rank files are the checkpoint's leaves, so ``verify`` checks every digest in them.
Non-tensor values (DCP serialises them with torch.save) are not unpickled: they are
named in ``metadata["dcp.objects"]``. At a URL the directory is a prefix: the index and
the rank files are the objects under it (``readers.remote_objects``). May be imported by
``readers.dispatch``, ``readers.distcp_checkpoint`` and above.
"""

from __future__ import annotations

import json
from abc import abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import torch

from statevault.engine.progress import Progress
from statevault.engine.storage import LOCAL_STORAGE, Storage, read_regular
from statevault.errors import HeaderError
from statevault.fileformat.dcp_index import (
    INDEX_NAME,
    MAX_INDEX_BYTES,
    BytesItem,
    TensorItem,
    decode,
)
from statevault.fileformat.dtypes import dtype_from_name, spec_for
from statevault.readers.base import Checkpoint, TensorInfo, tensor_chunks
from statevault.readers.listing import CheckpointKind
from statevault.readers.remote_objects import joined, read_small
from statevault.readers.safetensors_file import SafetensorsCheckpoint


def place_chunk(whole: torch.Tensor, offsets: Sequence[int], part: torch.Tensor) -> None:
    """Copy a stored chunk into the full tensor at its box (DCP's chunks never overlap)."""
    box = tuple(slice(o, o + s) for o, s in zip(offsets, part.shape, strict=True))
    whole[box] = part


def is_dcp_directory(path: Path) -> bool:
    return (path / INDEX_NAME).is_file()


class AssembledCheckpoint(Checkpoint):
    """A checkpoint whose tensors are stored as chunks (a distributed checkpoint): each is
    read by assembling its chunks into one tensor, the one thing its kinds do differently."""

    _tensors: dict[str, TensorInfo]

    @abstractmethod
    def _assemble(self, key: str, verify: bool) -> torch.Tensor:
        """The whole tensor ``key``, its chunks read (and checked if ``verify``) into place."""

    def read(
        self,
        names: Sequence[str] | None = None,
        *,
        verify: bool = True,
        progress: Progress | None = None,
    ) -> dict[str, torch.Tensor]:
        wanted = list(self._tensors) if names is None else list(names)
        result = {}
        for key in wanted:
            result[key] = self._assemble(key, verify)
            if progress is not None:
                progress.advance(self._tensors[key].nbytes)
        return result

    def chunks(self, name: str, *, elements: int, verify: bool = True) -> Iterator[torch.Tensor]:
        return tensor_chunks(self._assemble(name, verify), elements)


class DcpCheckpoint(AssembledCheckpoint):
    """The full tensors of a statevault DCP checkpoint directory, by state-dict key."""

    _items: dict[str, TensorItem]
    _files: dict[str, SafetensorsCheckpoint]
    _tensors: dict[str, TensorInfo]

    @classmethod
    def from_directory(
        cls, directory: Path | str, *, storage: Storage = LOCAL_STORAGE
    ) -> DcpCheckpoint:
        """Open the index and the headers of the rank files it names (a URL ``directory``:
        the prefix in ``storage`` holding them)."""
        self = cls._blank()
        if isinstance(directory, str):
            index_path: Path | str = joined(directory, INDEX_NAME)
            raw = read_small(storage, joined(directory, INDEX_NAME), limit=MAX_INDEX_BYTES)
        else:
            index_path = directory / INDEX_NAME
            raw = read_regular(index_path, limit=MAX_INDEX_BYTES)
        index = decode(raw, source=str(index_path))
        self.label = str(directory)
        self.kind = CheckpointKind.DCP
        self.aliases = {}
        self._items = {k: v for k, v in index.items.items() if isinstance(v, TensorItem)}
        objects = [k for k, v in index.items.items() if isinstance(v, BytesItem)]
        self.metadata = {"dcp.objects": json.dumps(objects)} if objects else {}
        self._files = {}
        try:
            for name in index.files:
                where = joined(directory, name) if isinstance(directory, str) else directory / name
                self._files[name] = SafetensorsCheckpoint.from_file(where, storage=storage)
        except BaseException:
            self.close()
            raise
        self.file_size = len(raw) + sum(f.file_size for f in self._files.values())
        self._tensors = {
            key: self._info(key, item, str(index_path)) for key, item in self._items.items()
        }
        return self

    def _info(self, key: str, item: TensorItem, source: str) -> TensorInfo:
        dtype = dtype_from_name(item.dtype)
        if dtype is None:
            raise HeaderError(f"{source}: {key}: unknown dtype {item.dtype!r}")
        numel = 1
        for size in item.shape:
            numel *= size
        spec = spec_for(dtype)
        return TensorInfo(
            name=key,
            dtype=dtype,
            shape=item.shape,
            nbytes=numel * dtype.itemsize,
            code=None if spec is None else spec.code,
            checksum=None,  # each chunk has its own, in its rank file
            file=self.label,
        )

    @property
    def tensors(self) -> Mapping[str, TensorInfo]:
        return self._tensors

    @property
    def has_checksums(self) -> bool:
        return bool(self._files) and all(f.has_checksums for f in self._files.values())

    def leaves(self) -> list[Checkpoint]:
        return list(self._files.values())

    def _assemble(self, key: str, verify: bool) -> torch.Tensor:
        item, info = self._items[key], self._tensors[key]
        whole = torch.empty(item.shape, dtype=info.dtype)
        for chunk in item.chunks:
            part = torch.empty(chunk.sizes, dtype=info.dtype)
            rank_file = self._files[chunk.place.file]
            stored = rank_file.aliases.get(chunk.place.key, chunk.place.key)
            rank_file.read_into([(stored, part)], verify=verify)
            place_chunk(whole, chunk.offsets, part)
        return whole

    def close(self) -> None:
        for rank_file in self._files.values():
            rank_file.close()
