"""``Writer``: DCP's ``StorageWriter`` that writes statevault files and a JSON index.

DCP calls, in order: ``reset`` (all ranks), ``set_up_storage_writer`` (all ranks),
``prepare_local_plan`` (all ranks), ``prepare_global_plan`` (the coordinator: it names each
rank's file after its own save id), ``write_data`` (all ranks: one statevault file per rank
with data, written through ``saving.save_to``: checksummed, committed atomically), then
``finish`` (the coordinator, after every rank wrote: the index, committed atomically, then
the rank files of earlier saves that the new index no longer names are removed).

A save killed at any point before the index commit leaves the previous index, and the
files it names, as they were: each save writes files under a new save id, never the old
names. May be imported by ``statevault.dcp``'s package module.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import secrets
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.planner import SavePlan, SavePlanner, WriteItem
from torch.distributed.checkpoint.storage import StorageWriter, WriteResult
from torch.futures import Future

from statevault.dcp.index_codec import StoredChunk, index_of
from statevault.dcp.places import checkpoint_dir, chosen_storage, joined, make_directory
from statevault.engine import tuning
from statevault.engine.fsspec_storage import StorageOptions
from statevault.engine.storage import Storage
from statevault.errors import UnsupportedObjectError
from statevault.fileformat.dcp_index import INDEX_NAME, RANK_FILE, Place, encode, rank_file_name
from statevault.saving.save import save_to

logger = logging.getLogger(__name__)


def _stored_key(item: WriteItem) -> str:
    """The tensor name of a piece in its rank file: the key itself for a whole tensor or a
    bytes item (so the file reads like a state dict), ``key@offsets`` for a shard."""
    data = item.tensor_data
    if data is None:
        return item.index.fqn
    offsets = tuple(data.chunk.offsets)
    if not any(offsets) and tuple(data.chunk.sizes) == tuple(data.size):
        return item.index.fqn
    return f"{item.index.fqn}@{','.join(map(str, offsets))}"


def _as_tensor(item: WriteItem, data: object) -> torch.Tensor:
    """A piece as a tensor to store: a bytes item's serialised value becomes uint8."""
    if isinstance(data, io.BytesIO):
        raw = bytearray(data.getbuffer())
        return (
            torch.frombuffer(raw, dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
        )
    if isinstance(data, torch.Tensor):
        return data.detach()
    raise UnsupportedObjectError(
        f"{item.index.fqn}: the save planner resolved it to {type(data).__name__}, not a "
        "tensor or bytes; statevault.dcp stores what DCP's planners produce"
    )


class Writer(StorageWriter):
    """Write a DCP checkpoint as statevault files (one per rank) plus a JSON index.

    Example::

        import torch.distributed.checkpoint as dcp
        from statevault.dcp import Writer
        dcp.save({"model": model.state_dict()}, storage_writer=Writer("ckpt/step-100"))
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        checksum: bool = True,
        fsync: bool = True,
        storage: Storage | None = None,
        storage_options: StorageOptions | None = None,
    ) -> None:
        super().__init__()
        self.path = checkpoint_dir(path)
        self.checksum = checksum
        self.fsync = fsync
        self.storage = chosen_storage(self.path, storage, storage_options)
        self.save_id = secrets.token_hex(8)
        self.rank = 0

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        if checkpoint_id:
            self.path = checkpoint_dir(checkpoint_id)
        self.save_id = secrets.token_hex(8)

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        rank = kwargs.get("rank")
        self.rank = rank if isinstance(rank, int) else 0

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        make_directory(self.storage, self.path)
        return plan

    def prepare_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]:
        return [
            dataclasses.replace(plan, storage_data=rank_file_name(rank, self.save_id))
            for rank, plan in enumerate(plans)
        ]

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        """Gather this rank's pieces into one state dict and save it as one file."""
        name = plan.storage_data
        if not isinstance(name, str):  # no coordinator planned for us (use_collectives=False)
            name = rank_file_name(self.rank, self.save_id)
        state: dict[str, torch.Tensor] = {}
        results: list[WriteResult] = []
        for item in plan.items:
            key = _stored_key(item)
            if key in state:
                raise UnsupportedObjectError(
                    f"{key!r}: two pieces of this rank's state would be stored under one "
                    "name; rename the state-dict key that contains '@'"
                )
            tensor = _as_tensor(item, planner.resolve_data(item))
            state[key] = tensor
            sizes = () if item.tensor_data is None else tuple(item.tensor_data.chunk.sizes)
            dtype = None if item.tensor_data is None else tensor.dtype
            results.append(
                WriteResult(
                    index=item.index,
                    size_in_bytes=tensor.nbytes,
                    storage_data=StoredChunk(Place(name, key), sizes, dtype),
                )
            )
        if state:
            save_to(
                state,
                joined(self.path, name),
                storage=self.storage,
                checksum=self.checksum,
                fsync=self.fsync,
            )
        future: Future[list[WriteResult]] = Future()
        future.set_result(results)
        return future

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        """Commit the index (the checkpoint appears whole), then drop superseded rank files."""
        index = index_of(metadata, results, save_id=self.save_id)
        pending = self.storage.begin(joined(self.path, INDEX_NAME))
        try:
            raw = encode(index)
            pending.write(0, [memoryview(raw)])
            pending.commit(durable=self.fsync)
        except BaseException:
            pending.abort()
            raise
        self._remove_superseded(set(index.files))

    def _remove_superseded(self, kept: set[str]) -> None:
        """Rank files of earlier or killed saves: nothing committed names them any more.

        Removed on several threads: freeing a large file's pages takes milliseconds per
        64 MiB, and the save is not over (every rank waits) until this returns.
        """
        names = [
            name
            for name in self.storage.list_names(self.path)
            if RANK_FILE.fullmatch(name) and name not in kept
        ]
        for name in names:
            logger.debug("removing %s: not named by the new index", name)
        if len(names) < 2:
            for name in names:
                self.storage.remove(joined(self.path, name))
            return
        with ThreadPoolExecutor(min(len(names), tuning.MAX_THREADS)) as pool:
            list(pool.map(self.storage.remove, [joined(self.path, name) for name in names]))

    def storage_meta(self) -> StorageMeta | None:
        return StorageMeta(checkpoint_id=self.path, save_id=self.save_id)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        return isinstance(checkpoint_id, (str, os.PathLike))
