"""``Reader``: DCP's ``StorageReader`` for directories written by ``statevault.dcp.Writer``.

DCP calls, in order: ``reset``, ``read_metadata`` (the JSON index, turned into DCP's
``Metadata``: no pickle is read), ``set_up_storage_reader``, ``prepare_local_plan``,
``prepare_global_plan`` (the coordinator), then ``read_data`` with the pieces this rank
needs. Each piece is a box inside one stored chunk (a whole chunk when the world size is
unchanged, a part of one when DCP reshards); only the byte runs of that box are read
(``byte_ranges``), straight into the destination tensor when it is a contiguous CPU tensor
of the stored dtype, on a few threads. A chunk read whole is verified against its digest.
May be imported by ``statevault.dcp``'s package module.
"""

from __future__ import annotations

import io
import os
import secrets
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from torch.distributed.checkpoint.metadata import Metadata
from torch.distributed.checkpoint.planner import LoadItemType, LoadPlan, LoadPlanner, ReadItem
from torch.distributed.checkpoint.storage import StorageReader
from torch.futures import Future

from statevault.dcp.byte_ranges import box_runs
from statevault.dcp.index_codec import StoredChunk, metadata_of
from statevault.dcp.places import checkpoint_dir, chosen_storage, joined
from statevault.dcp.rank_files import RankFile
from statevault.engine import tuning
from statevault.engine.fsspec_storage import StorageOptions
from statevault.engine.memory import tensor_memory
from statevault.engine.storage import Storage
from statevault.errors import CheckpointNotFoundError, HeaderError, StateVaultError
from statevault.fileformat.dcp_index import INDEX_NAME, MAX_INDEX_BYTES, decode
from statevault.fileformat.table import TensorEntry

# Past this many separate runs (a box of a few columns of a tall chunk), one read of the
# span that covers them all costs less than a request per run, above all on object storage.
MAX_RUNS = 64


class Reader(StorageReader):
    """Load a DCP checkpoint written by :class:`statevault.dcp.Writer`, at any world size.

    Example::

        import torch.distributed.checkpoint as dcp
        from statevault.dcp import Reader
        dcp.load(state, storage_reader=Reader("ckpt/step-100"))
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        verify: bool = True,
        storage: Storage | None = None,
        storage_options: StorageOptions | None = None,
        threads: int | None = None,
    ) -> None:
        super().__init__()
        self.path = checkpoint_dir(path)
        self.verify = verify
        self.storage = chosen_storage(self.path, storage, storage_options)
        self.threads = threads if threads is not None else tuning.MAX_THREADS
        self.load_id = secrets.token_hex(8)
        self.stored: dict[Any, StoredChunk] = {}

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        if checkpoint_id:
            self.path = checkpoint_dir(checkpoint_id)
        self.stored = {}
        self.load_id = secrets.token_hex(8)

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        """The committed index as DCP's ``Metadata`` (refusing a directory without one)."""
        name = joined(self.path, INDEX_NAME)
        try:
            stored = self.storage.open(name)
        except CheckpointNotFoundError:
            raise CheckpointNotFoundError(
                f"{self.path}: no statevault DCP checkpoint here ({INDEX_NAME} is missing). "
                "The index is written last, so a save that did not finish leaves none; load "
                "an earlier checkpoint, or check the path"
            ) from None
        with stored:
            if stored.size > MAX_INDEX_BYTES:
                raise HeaderError(
                    f"{name}: is {stored.size} bytes, above the {MAX_INDEX_BYTES} byte limit "
                    "for an index; it is damaged"
                )
            raw = stored.read(stored.size, 0)
        metadata = metadata_of(decode(raw, source=name), checkpoint_id=self.path, source=name)
        assert metadata.storage_meta is not None  # metadata_of always sets it
        metadata.storage_meta.load_id = self.load_id
        return metadata

    def set_up_storage_reader(
        self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any
    ) -> None:
        if not isinstance(metadata.storage_data, dict):
            raise StateVaultError(
                "statevault.dcp.Reader needs the metadata its own read_metadata returned"
            )
        self.stored = metadata.storage_data

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        return plan

    def prepare_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]:
        return plans

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        """Read each requested piece, one rank file at a time, the tensors on threads."""
        by_file: dict[str, list[ReadItem]] = defaultdict(list)
        for item in plan.items:
            by_file[self.stored[item.storage_index].place.file].append(item)
        for file, items in by_file.items():
            rank_file = RankFile(self.storage, joined(self.path, file))
            try:
                self._read_file(rank_file, items, planner)
            finally:
                rank_file.close()
        future: Future[None] = Future()
        future.set_result(None)
        return future

    def _read_file(self, rank_file: RankFile, items: list[ReadItem], planner: LoadPlanner) -> None:
        jobs: list[tuple[ReadItem, StoredChunk, TensorEntry, torch.Tensor]] = []
        for item in items:
            chunk = self.stored[item.storage_index]
            entry = rank_file.entry(chunk.place.key)
            if item.type == LoadItemType.BYTE_IO:
                data = bytearray(entry.nbytes)
                rank_file.read_into(entry, memoryview(data), 0)
                if self.verify:
                    rank_file.check_whole(entry, memoryview(data))
                planner.load_bytes(item, io.BytesIO(data))
            else:
                jobs.append((item, chunk, entry, planner.resolve_tensor(item).detach()))
        workers = max(1, min(self.threads, len(jobs)))
        if workers == 1:
            for job in jobs:
                self._read_tensor(rank_file, *job)
        else:
            with ThreadPoolExecutor(workers, thread_name_prefix="statevault-dcp") as pool:
                for done in pool.map(lambda job: self._read_tensor(rank_file, *job), jobs):
                    del done
        for item, _, _, target in jobs:
            planner.commit_tensor(item, target)

    def _read_tensor(
        self,
        rank_file: RankFile,
        item: ReadItem,
        chunk: StoredChunk,
        entry: TensorEntry,
        target: torch.Tensor,
    ) -> None:
        """Read the box ``item`` asks for into ``target`` (directly when its memory allows)."""
        assert chunk.dtype is not None  # tensors always have one (index_codec)
        itemsize = chunk.dtype.itemsize
        numel = 1
        for size in chunk.sizes:
            numel *= size
        if entry.nbytes != numel * itemsize:
            raise HeaderError(
                f"{rank_file.name}: {entry.name} holds {entry.nbytes} bytes, but the index "
                f"describes a {chunk.dtype} chunk of {list(chunk.sizes)} ({numel * itemsize} "
                "bytes); the file does not belong to this index"
            )
        lengths = tuple(item.lengths)
        if tuple(target.shape) != lengths:
            raise StateVaultError(
                f"internal error: {item.dest_index.fqn}: destination {tuple(target.shape)} for "
                f"a piece of {lengths}"
            )
        runs = box_runs(chunk.sizes, itemsize, tuple(item.storage_offsets), lengths)
        direct = target.is_cpu and target.is_contiguous() and target.dtype == chunk.dtype
        dest = target if direct else torch.empty(lengths, dtype=chunk.dtype)
        view = tensor_memory(dest)
        _read_runs(rank_file, entry, runs, view)
        if (self.verify and runs == [(0, entry.nbytes)]) or (self.verify and entry.nbytes == 0):
            rank_file.check_whole(entry, view)
        if not direct:
            with torch.no_grad():
                target.copy_(dest)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        return isinstance(checkpoint_id, (str, os.PathLike))


def _read_runs(
    rank_file: RankFile, entry: TensorEntry, runs: list[tuple[int, int]], view: memoryview
) -> None:
    """Fill ``view`` with the runs back to back: one read each, or one covering read."""
    if len(runs) <= MAX_RUNS:
        done = 0
        for start, nbytes in runs:
            rank_file.read_into(entry, view[done : done + nbytes], start)
            done += nbytes
        return
    first = runs[0][0]
    span = bytearray(runs[-1][0] + runs[-1][1] - first)
    rank_file.read_into(entry, memoryview(span), first)
    done = 0
    for start, nbytes in runs:
        view[done : done + nbytes] = span[start - first : start - first + nbytes]
        done += nbytes
