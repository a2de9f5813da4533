"""DCP's ``Metadata`` <-> statevault's JSON index (``fileformat.dcp_index``): no pickle.

DCP hands the coordinator a ``Metadata`` with the global layout (every tensor's dtype,
size and chunks; the bytes items) and each rank's ``WriteResult``\\ s (where each chunk was
stored); this module folds both into a :class:`DcpIndex`, and turns an index back into the
``Metadata`` DCP's load planner works from, with each chunk's place (and its sizes and
dtype, for the byte arithmetic) as the reader's ``storage_data``.
May be imported by the writer and reader of ``statevault.dcp``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.storage import WriteResult

from statevault.errors import HeaderError, UnsupportedObjectError
from statevault.fileformat.dcp_index import (
    BytesItem,
    Chunk,
    DcpIndex,
    Item,
    Place,
    TensorItem,
)


@dataclass(frozen=True)
class StoredChunk:
    """A chunk's place with what the reader needs to compute byte ranges in it."""

    place: Place
    sizes: tuple[int, ...]
    dtype: torch.dtype | None  # None for a bytes item


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def dtype_from_name(name: str, *, source: str) -> torch.dtype:
    found = getattr(torch, name, None)
    if not isinstance(found, torch.dtype):
        raise HeaderError(
            f"{source}: names the dtype {name!r}, which this torch does not have (upgrade "
            "torch, or convert the checkpoint where it was written)"
        )
    return found


def _planner_data(value: Any) -> dict[str, tuple[str | int, ...]] | None:
    """DCP's default planners store key -> path tuples (or nothing); anything else would
    need pickle, so it is refused."""
    if value is None:
        return None
    if isinstance(value, Mapping) and all(
        isinstance(key, str)
        and isinstance(path, (tuple, list))
        and all(type(p) in (str, int) for p in path)
        for key, path in value.items()
    ):
        return {key: tuple(path) for key, path in value.items()}
    raise UnsupportedObjectError(
        f"the save planner's planner_data ({type(value).__name__}) is not a mapping of keys "
        "to paths; statevault.dcp stores metadata as JSON, so use DCP's default planner or "
        "keep planner_data to str -> tuple of str/int"
    )


def index_of(metadata: Metadata, results: list[list[WriteResult]], *, save_id: str) -> DcpIndex:
    """The index of a finished save: the global layout and where every rank put each piece."""
    places: dict[MetadataIndex, Place] = {}
    for rank_results in results:
        for result in rank_results:
            places[result.index] = result.storage_data.place
    items: dict[str, Item] = {}
    for fqn, described in metadata.state_dict_metadata.items():
        if isinstance(described, BytesStorageMetadata):
            items[fqn] = BytesItem(places[MetadataIndex(fqn)])
            continue
        chunks = tuple(
            Chunk(
                tuple(chunk.offsets),
                tuple(chunk.sizes),
                places[MetadataIndex(fqn, chunk.offsets)],
            )
            for chunk in described.chunks
        )
        items[fqn] = TensorItem(
            dtype_name(described.properties.dtype), tuple(described.size), chunks
        )
    return DcpIndex(
        items=items,
        planner_data=_planner_data(metadata.planner_data),
        dcp_version=metadata.version,
        save_id=save_id,
    )


def metadata_of(index: DcpIndex, *, checkpoint_id: str, source: str) -> Metadata:
    """DCP's ``Metadata`` for a load, ``storage_data`` mapping each piece to a StoredChunk."""
    layout: dict[str, TensorStorageMetadata | BytesStorageMetadata] = {}
    stored: dict[MetadataIndex, StoredChunk] = {}
    for fqn, item in index.items.items():
        if isinstance(item, BytesItem):
            layout[fqn] = BytesStorageMetadata()
            stored[MetadataIndex(fqn)] = StoredChunk(item.place, (), None)
            continue
        dtype = dtype_from_name(item.dtype, source=source)
        layout[fqn] = TensorStorageMetadata(
            properties=TensorProperties(dtype=dtype),
            size=torch.Size(item.shape),
            chunks=[
                ChunkStorageMetadata(torch.Size(c.offsets), torch.Size(c.sizes))
                for c in item.chunks
            ],
        )
        for chunk in item.chunks:
            stored[MetadataIndex(fqn, chunk.offsets)] = StoredChunk(chunk.place, chunk.sizes, dtype)
    return Metadata(
        state_dict_metadata=layout,
        planner_data=None if index.planner_data is None else dict(index.planner_data),
        storage_data=stored,
        storage_meta=StorageMeta(checkpoint_id=checkpoint_id, save_id=index.save_id),
        version=index.dcp_version,
    )
