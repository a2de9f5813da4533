"""Reading both sides of a diff in bounded memory and comparing them on several threads.

Large tensors are streamed in chunks of ``CHUNK_ELEMENTS`` elements, both files in lockstep,
so peak memory is a few chunk-sized temporaries (tens of MB) whatever the tensor sizes; small
tensors are read and compared in batches. Checksums are verified while reading. May be
imported by: ``statevault.tools``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from functools import partial

import torch

from statevault.engine.progress import Progress
from statevault.engine.scan import ChunkReader, RowReader, default_threads, run_parallel
from statevault.engine.tuning import PARALLEL_MIN_BYTES
from statevault.readers.base import Checkpoint, TensorInfo
from statevault.readers.safetensors_file import SafetensorsCheckpoint
from statevault.readers.sharded import ShardedCheckpoint
from statevault.tools.diff_report import TensorDelta
from statevault.tools.diff_values import TensorComparison, squared_norm

# Elements per streamed chunk of a large tensor: 512 KiB of float32, so a chunk of A and
# its partner in B are compared while both are still in a core's L2 (1 MiB here).
CHUNK_ELEMENTS = 1 << 17
STREAM_BYTES = 4 << 20  # small tensors are compared in batches of about this many bytes
SMALL_BATCH = 1024  # ... and at most this many tensors


def _flat(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor's elements as one 1-D tensor (sparse and other layouts made dense)."""
    if tensor.layout != torch.strided:
        tensor = tensor.to_dense()
    return tensor.detach().reshape(-1)


class _Side:
    """One input's tensors as 1-D chunks. Tensors in a safetensors file are read and
    verified through a reused buffer per task (``ChunkReader``), so a chunk is compared
    while it is still in cache; other kinds come from the input's own ``chunks``."""

    def __init__(self, source: Checkpoint) -> None:
        self.source = source
        # only where the source's names are its files' own (one file, or shards): a
        # folder prefixes each file's names with its key, so it reads through the source
        same_names = isinstance(source, (SafetensorsCheckpoint, ShardedCheckpoint))
        files = source.leaves() if same_names else []
        self.files = {f.label: f for f in files if isinstance(f, SafetensorsCheckpoint)}

    def chunk_readers(self) -> dict[str, ChunkReader]:
        """Buffers for one task (tasks run on their own threads)."""
        return {label: ChunkReader(f.reader, f.vault.checksums) for label, f in self.files.items()}

    def chunks(self, meta: TensorInfo, readers: dict[str, ChunkReader]) -> Iterator[torch.Tensor]:
        reader = readers.get(meta.file)
        if reader is None:  # a torch file: its tensors are in memory (or mapped) already
            flat = _flat(self.source.read([meta.name])[meta.name])
            for start in range(0, max(1, flat.numel()), CHUNK_ELEMENTS):
                yield flat[start : start + CHUNK_ELEMENTS]
            return
        chunk_bytes = CHUNK_ELEMENTS * meta.dtype.itemsize
        for piece in reader.chunks(meta.name, chunk_bytes=chunk_bytes):
            yield torch.frombuffer(piece, dtype=torch.uint8).view(meta.dtype)

    def readers(self) -> dict[str, RowReader]:
        """Batch buffers for one task."""
        return {label: RowReader(f.reader, f.vault.checksums) for label, f in self.files.items()}

    def small(self, names: list[str], readers: dict[str, RowReader]) -> list[torch.Tensor]:
        """Whole small tensors, many per read, verified; views valid until the next call."""
        metas = [self.source.resolve(name) for name in names]
        by_file: dict[str, list[str]] = {}
        for meta in metas:
            by_file.setdefault(meta.file, []).append(meta.name)
        views: dict[tuple[str, str], memoryview] = {}
        others: list[str] = []
        for label, stored in by_file.items():
            if label in readers:
                views.update(((label, n), v) for n, v in readers[label].read(stored).items())
            else:
                others += stored
        flat = self.source.read(others) if others else {}
        result = []
        for meta in metas:
            view = views.get((meta.file, meta.name))
            if view is None:
                result.append(_flat(flat[meta.name]))
            elif len(view) == 0:
                result.append(torch.empty(0, dtype=meta.dtype))
            else:
                result.append(torch.frombuffer(view, dtype=torch.uint8).view(meta.dtype))
        return result


class _Job:
    """What the comparing threads share: both sides, the tolerances, the progress hook."""

    def __init__(
        self, a: Checkpoint, b: Checkpoint, atol: float, rtol: float, progress: Progress | None
    ) -> None:
        self.a, self.b = _Side(a), _Side(b)
        self.atol, self.rtol = atol, rtol
        self.progress = progress

    def _delta(self, name: str, tensor: TensorComparison) -> TensorDelta:
        meta_a, meta_b = self.a.source.resolve(name), self.b.source.resolve(name)

        def reread(indices: list[int]) -> float:
            wanted = set(indices)
            chunks = self.b.chunks(meta_b, self.b.chunk_readers())
            return sum(squared_norm(c) for i, c in enumerate(chunks) if i in wanted)

        mismatched, max_abs, rel = tensor.result(reread)
        return TensorDelta(
            name, meta_a.shape, meta_a.dtype_name, meta_b.dtype_name, mismatched, max_abs, rel
        )

    def large(self, name: str, stop: threading.Event) -> list[TensorDelta]:
        """One large tensor: both files read chunk by chunk in lockstep on this thread."""
        readers_a, readers_b = self.a.chunk_readers(), self.b.chunk_readers()
        meta_a, meta_b = self.a.source.resolve(name), self.b.source.resolve(name)
        tensor = TensorComparison(self.atol, self.rtol)
        pairs = zip(self.a.chunks(meta_a, readers_a), self.b.chunks(meta_b, readers_b), strict=True)
        for index, (x, y) in enumerate(pairs):
            if stop.is_set():
                return []
            tensor.add(index, x, y)
            if self.progress is not None:
                self.progress.advance(x.numel() * x.element_size())
        return [self._delta(name, tensor)]

    def small(self, names: list[str], stop: threading.Event) -> list[TensorDelta]:
        """A batch of small tensors, each one chunk."""
        if stop.is_set():
            return []
        deltas = []
        left, right = self.a.small(names, self.a.readers()), self.b.small(names, self.b.readers())
        for name, x, y in zip(names, left, right, strict=True):
            tensor = TensorComparison(self.atol, self.rtol)
            tensor.add(0, x, y)
            deltas.append(self._delta(name, tensor))
        if self.progress is not None:
            self.progress.advance(sum(self.a.source.resolve(n).nbytes for n in names))
        return deltas


def compare_values(
    a: Checkpoint,
    b: Checkpoint,
    todo: list[str],
    atol: float,
    rtol: float,
    progress: Progress | None,
    threads: int | None,
) -> list[TensorDelta]:
    """Compare every tensor in ``todo`` (in that order), several tensors at once."""
    job = _Job(a, b, atol, rtol, progress)
    tasks: list[Callable[[threading.Event], list[TensorDelta]]] = []
    sizes: list[int] = []
    batch: list[str] = []
    size = 0
    for name in todo:
        meta = a.resolve(name)
        if meta.numel > CHUNK_ELEMENTS:  # streamed in chunks
            tasks.append(partial(job.large, name))
            sizes.append(meta.nbytes)
            continue
        batch.append(name)
        size += meta.nbytes
        if size >= STREAM_BYTES or len(batch) >= SMALL_BATCH:
            tasks.append(partial(job.small, batch))
            sizes.append(size)
            batch, size = [], 0
    if batch:
        tasks.append(partial(job.small, batch))
        sizes.append(size)
    order = sorted(range(len(tasks)), key=lambda i: -sizes[i])  # big first: busy threads
    workers = 1 if sum(sizes) < PARALLEL_MIN_BYTES else (threads or default_threads())
    results = run_parallel([tasks[i] for i in order], workers)
    by_task: list[list[TensorDelta]] = [[] for _ in tasks]
    for i, result in zip(order, results, strict=True):
        by_task[i] = result
    return [delta for result in by_task for delta in result]
