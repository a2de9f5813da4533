"""diff(): compare two checkpoints key by key and number by number, in bounded memory.

Both sides are streamed in chunks of ``CHUNK_ELEMENTS`` elements, so peak memory is a few
chunk-sized temporaries (tens of MB) whatever the tensor sizes. Values are compared in
float64 (complex128 for complex tensors) with ``torch.isclose`` semantics,
``|a - b| <= atol + rtol * |b|``; NaNs in the same place count as equal. Dtypes with no
arithmetic in torch (``float4_e2m1fn_x2``) are compared bit for bit. Non-tensor state (epoch,
hyper-parameters) is compared too; user metadata is not.
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

import torch

from statevault.engine.progress import Progress
from statevault.engine.scan import ChunkReader, RowReader, default_threads, run_parallel
from statevault.engine.tuning import PARALLEL_MIN_BYTES
from statevault.readers.base import Reader, TensorMeta
from statevault.readers.dispatch import open_checkpoint
from statevault.readers.files import SafetensorsInput, ShardedInput
from statevault.reports.display import shown, shown_value
from statevault.reports.load_report import MAX_LISTED
from statevault.tools.inspection import state_leaves

# Elements per streamed chunk of a large tensor: 512 KiB of float32, so a chunk of A and
# its partner in B are compared while both are still in a core's L2 (1 MiB here).
CHUNK_ELEMENTS = 1 << 17
PIECE_ELEMENTS = 1 << 15  # arithmetic pieces: in cache, and at torch's grain (no thread pool)
STREAM_BYTES = 4 << 20  # small tensors are compared in batches of about this many bytes
SMALL_BATCH = 1024  # ... and at most this many tensors
_WIDE_INTEGERS = frozenset(
    dt for dt in (torch.int64, getattr(torch, "uint64", None)) if isinstance(dt, torch.dtype)
)  # integers float64 cannot hold exactly
_NO_ARITHMETIC = frozenset(
    dt for dt in (getattr(torch, "float4_e2m1fn_x2", None),) if isinstance(dt, torch.dtype)
)


@dataclass(frozen=True)
class TensorDelta:
    """How one tensor present in both files, with the same shape, differs."""

    name: str
    shape: tuple[int, ...]
    dtype_a: str
    dtype_b: str
    mismatched: int  # elements outside the tolerance
    max_abs: float | None  # None when compared bit for bit
    rel_l2: float | None  # ||a - b|| / ||b||

    @property
    def equal(self) -> bool:
        return self.mismatched == 0

    def __str__(self) -> str:
        numel = math.prod(self.shape)
        text = f"{shown(self.name)}: {self.mismatched:,} of {numel:,} element(s) differ"
        if self.max_abs is not None:
            text += f", max abs {self.max_abs:.6g}, rel L2 {self.rel_l2:.6g}"
        return text


@dataclass(frozen=True)
class DiffReport:
    """Everything diff found; ``equal`` is what the exit code reports."""

    a: str
    b: str
    atol: float
    rtol: float
    only_a: tuple[str, ...] = ()
    only_b: tuple[str, ...] = ()
    shape_changes: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...] = ()
    dtype_changes: tuple[tuple[str, str, str], ...] = ()
    tensors: tuple[TensorDelta, ...] = ()  # every compared tensor, equal or not
    state_changes: tuple[tuple[str, Any, Any], ...] = ()  # (path, value in A, value in B)

    @property
    def different(self) -> tuple[TensorDelta, ...]:
        return tuple(t for t in self.tensors if not t.equal)

    @property
    def equal(self) -> bool:
        return not (
            self.only_a
            or self.only_b
            or self.shape_changes
            or self.dtype_changes
            or self.state_changes
            or self.different
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "equal": self.equal,
            "atol": self.atol,
            "rtol": self.rtol,
            "only_a": list(self.only_a),
            "only_b": list(self.only_b),
            "shape_changes": [
                {"name": n, "a": list(sa), "b": list(sb)} for n, sa, sb in self.shape_changes
            ],
            "dtype_changes": [{"name": n, "a": da, "b": db} for n, da, db in self.dtype_changes],
            "state_changes": [
                {"path": p, "a": _json_value(va), "b": _json_value(vb)}
                for p, va, vb in self.state_changes
            ],
            "tensors": [
                {
                    "name": t.name,
                    "equal": t.equal,
                    "mismatched": t.mismatched,
                    "numel": math.prod(t.shape),
                    "max_abs": _json_float(t.max_abs),
                    "rel_l2": _json_float(t.rel_l2),
                }
                for t in self.tensors
            ],
        }

    def __str__(self) -> str:
        a, b = shown(self.a), shown(self.b)
        if self.equal:
            return (
                f"{a} and {b} are equal: {len(self.tensors)} tensor(s) compared "
                f"(atol={self.atol:g}, rtol={self.rtol:g})"
            )
        lines = [f"{a} and {b} differ:"]
        # each list is capped before its lines are made: a 200k-key diff formats 20 of them
        sections: list[tuple[str, Sequence[Any], Callable[[Any], str]]] = [
            ("Only in A", self.only_a, shown),
            ("Only in B", self.only_b, shown),
            ("Shape changes", self.shape_changes, _shape_line),
            ("Dtype changes", self.dtype_changes, lambda c: f"{shown(c[0])}: {c[1]} -> {c[2]}"),
            ("Values differ", self.different, str),
            ("State changes", self.state_changes, _state_line),
        ]
        for title, items, line in sections:
            if items:
                lines.append(f"{title} ({len(items)}):")
                lines += [f"  {line(item)}" for item in items[:MAX_LISTED]]
                if len(items) > MAX_LISTED:
                    lines.append(f"  ... and {len(items) - MAX_LISTED} more")
        return "\n".join(lines)


def _shape_line(change: tuple[str, tuple[int, ...], tuple[int, ...]]) -> str:
    return f"{shown(change[0])}: {list(change[1])} -> {list(change[2])}"


def _state_line(change: tuple[str, Any, Any]) -> str:
    return f"{shown(change[0])}: {shown_value(change[1])} -> {shown_value(change[2])}"


def _json_value(value: Any) -> Any:
    return _json_float(value) if isinstance(value, float) else value


def _json_float(value: float | None) -> float | str | None:
    if value is None or math.isfinite(value):
        return value
    return str(value)  # "inf" / "nan": keep --json output valid JSON


# -- numeric comparison --------------------------------------------------------------------


@dataclass
class _Totals:
    mismatched: int = 0
    max_abs: float = 0.0
    sq_diff: float = 0.0
    sq_ref: float = 0.0
    bitwise: bool = False


@functools.cache
def _memcmp() -> Callable[[int, int, int], int]:
    """libc's ``memcmp`` (through ctypes, so the GIL is released while it runs)."""
    function = ctypes.CDLL(None).memcmp
    function.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    function.restype = ctypes.c_int
    return cast("Callable[[int, int, int], int]", function)


def _same_bytes(x: torch.Tensor, y: torch.Tensor) -> bool:
    """Whether two 1-D chunks of one dtype hold identical bytes (then they compare equal).

    ``memcmp``, at memory speed: ``torch.equal`` ran at ~0.2-0.5 GB/s here (uint8 views).
    """
    if x.dtype != y.dtype or x.numel() != y.numel():
        return False
    if not (x.is_contiguous() and y.is_contiguous()):
        x, y = x.contiguous(), y.contiguous()
    nbytes = x.numel() * x.element_size()
    return nbytes == 0 or _memcmp()(x.data_ptr(), y.data_ptr(), nbytes) == 0


def _wide(x: torch.Tensor, complex_: bool) -> torch.Tensor:
    return x.to(torch.complex128 if complex_ else torch.float64)


def _sq_ref(y: torch.Tensor) -> float:
    """``sum(|y|^2)`` over the finite elements, in float64."""
    total = 0.0
    for start in range(0, y.numel(), PIECE_ELEMENTS):
        total += _finite_sq(_wide(y[start : start + PIECE_ELEMENTS], y.is_complex()))
    return total


def _sum_sq(values: torch.Tensor) -> float:
    # not torch.dot: that goes to BLAS and its own threads (7 ms per 32k elements here)
    return float(values.square().sum())


def _finite_sq(b: torch.Tensor) -> float:
    ref = b.abs() if b.is_complex() else b
    total = _sum_sq(ref)
    if math.isfinite(total):
        return total
    ref = torch.where(ref.isfinite(), ref, 0.0)  # rare: only when an inf or NaN is there
    return _sum_sq(ref)


def _numeric_piece(x: torch.Tensor, y: torch.Tensor, atol: float, rtol: float, t: _Totals) -> None:
    """One piece of at most ``PIECE_ELEMENTS``: few passes, in cache, on this thread (torch
    runs ops this small inline; through its intra-op pool on an oversubscribed machine they
    were 10-50x slower). NaN and inf handling only when a sum shows one is there."""
    complex_ = x.is_complex() or y.is_complex()
    a, b = _wide(x, complex_), _wide(y, complex_)
    delta = (a - b).abs()
    if complex_:
        delta = delta.to(torch.float64)
    sq_diff = _sum_sq(delta)
    if math.isnan(sq_diff):  # rare: NaN in the same place is equal, inf == inf too
        same = (a == b) | (a.isnan() & b.isnan())
        delta = torch.where(delta.isnan(), math.inf, delta)  # NaN vs number: maximal
        delta.masked_fill_(same, 0.0)
        sq_diff = _sum_sq(delta)
    peak = float(delta.max()) if delta.numel() else 0.0
    if atol == rtol == 0 and x.dtype == y.dtype and x.dtype in _WIDE_INTEGERS:
        t.mismatched += int(torch.count_nonzero(x != y))  # 2**53 + 1 vs 2**53: float64 agrees
    elif rtol == 0:
        if peak > atol:  # otherwise nothing is outside the tolerance: skip the count
            t.mismatched += int(torch.count_nonzero(delta > atol if atol else delta))
    else:
        t.mismatched += int(torch.count_nonzero(delta > b.abs().mul_(rtol).add_(atol)))
    t.max_abs = max(t.max_abs, peak)
    t.sq_diff += sq_diff
    t.sq_ref += _finite_sq(b)


def _numeric_chunk(x: torch.Tensor, y: torch.Tensor, atol: float, rtol: float, t: _Totals) -> None:
    for start in range(0, x.numel(), PIECE_ELEMENTS):
        stop = start + PIECE_ELEMENTS
        _numeric_piece(x[start:stop], y[start:stop], atol, rtol, t)


def _bitwise_chunk(x: torch.Tensor, y: torch.Tensor, t: _Totals) -> None:
    t.bitwise = True
    if x.dtype != y.dtype:
        t.mismatched += x.numel()
        return
    rows_a = x.view(torch.uint8).reshape(x.numel(), -1)
    rows_b = y.view(torch.uint8).reshape(y.numel(), -1)
    t.mismatched += int((rows_a != rows_b).any(dim=1).sum())


class _Tensor:
    """Accumulates one tensor's comparison chunk by chunk.

    Byte-identical chunks cost one ``memcmp``-speed comparison and no arithmetic. Only the
    relative L2 needs anything from them (``|b|^2``), and only once the tensor turns out to
    differ: equal chunks met before the first difference are listed and re-read from B at
    the end (``pending``), equal chunks after it are measured on the spot.
    """

    def __init__(self, atol: float, rtol: float) -> None:
        self.atol, self.rtol = atol, rtol
        self.totals = _Totals()
        self.differs = False
        self.pending: list[int] = []  # equal chunks seen before the first difference

    def add(self, index: int, x: torch.Tensor, y: torch.Tensor) -> None:
        if x.dtype in _NO_ARITHMETIC or y.dtype in _NO_ARITHMETIC:
            _bitwise_chunk(x, y, self.totals)
            return
        if _same_bytes(x, y):
            if self.differs:
                self.totals.sq_ref += _sq_ref(y)
            else:
                self.pending.append(index)
            return
        self.differs = True
        _numeric_chunk(x, y, self.atol, self.rtol, self.totals)

    def result(
        self, reread: Callable[[list[int]], float]
    ) -> tuple[int, float | None, float | None]:
        t = self.totals
        if t.bitwise:
            return t.mismatched, None, None
        if not self.differs:
            return 0, 0.0, 0.0
        if self.pending:
            t.sq_ref += reread(self.pending)
        if t.sq_ref > 0:
            rel = math.sqrt(t.sq_diff) / math.sqrt(t.sq_ref)
        else:
            rel = 0.0 if t.sq_diff == 0 else math.inf
        return t.mismatched, t.max_abs, rel


def _flat(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor's elements as one 1-D tensor (sparse and other layouts made dense)."""
    if tensor.layout != torch.strided:
        tensor = tensor.to_dense()
    return tensor.detach().reshape(-1)


class _Side:
    """One input's tensors as 1-D chunks. Tensors in a safetensors file are read and
    verified through a reused buffer per task (``ChunkReader``), so a chunk is compared
    while it is still in cache; other kinds come from the input's own ``chunks``."""

    def __init__(self, source: Reader) -> None:
        self.source = source
        # only where the source's names are its files' own (one file, or shards): a
        # folder prefixes each file's names with its key, so it reads through the source
        same_names = isinstance(source, (SafetensorsInput, ShardedInput))
        files = source.leaves() if same_names else []
        self.files = {f.label: f for f in files if isinstance(f, SafetensorsInput)}

    def chunk_readers(self) -> dict[str, ChunkReader]:
        """Buffers for one task (tasks run on their own threads)."""
        return {
            label: ChunkReader(f.checkpoint.reader, f.checkpoint.vault.checksums)
            for label, f in self.files.items()
        }

    def chunks(self, meta: TensorMeta, readers: dict[str, ChunkReader]) -> Iterator[torch.Tensor]:
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
        return {
            label: RowReader(f.checkpoint.reader, f.checkpoint.vault.checksums)
            for label, f in self.files.items()
        }

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
        self, a: Reader, b: Reader, atol: float, rtol: float, progress: Progress | None
    ) -> None:
        self.a, self.b = _Side(a), _Side(b)
        self.atol, self.rtol = atol, rtol
        self.progress = progress

    def _delta(self, name: str, tensor: _Tensor) -> TensorDelta:
        meta_a, meta_b = self.a.source.resolve(name), self.b.source.resolve(name)

        def reread(indices: list[int]) -> float:
            wanted = set(indices)
            chunks = self.b.chunks(meta_b, self.b.chunk_readers())
            return sum(_sq_ref(c) for i, c in enumerate(chunks) if i in wanted)

        mismatched, max_abs, rel = tensor.result(reread)
        return TensorDelta(
            name, meta_a.shape, meta_a.dtype_name, meta_b.dtype_name, mismatched, max_abs, rel
        )

    def large(self, name: str, stop: threading.Event) -> list[TensorDelta]:
        """One large tensor: both files read chunk by chunk in lockstep on this thread."""
        readers_a, readers_b = self.a.chunk_readers(), self.b.chunk_readers()
        meta_a, meta_b = self.a.source.resolve(name), self.b.source.resolve(name)
        tensor = _Tensor(self.atol, self.rtol)
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
            tensor = _Tensor(self.atol, self.rtol)
            tensor.add(0, x, y)
            deltas.append(self._delta(name, tensor))
        if self.progress is not None:
            self.progress.advance(sum(self.a.source.resolve(n).nbytes for n in names))
        return deltas


def _deltas(
    a: Reader,
    b: Reader,
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


def _same_value(x: Any, y: Any) -> bool:
    if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
        return True
    return type(x) is type(y) and bool(x == y)


def _state_changes(a: Reader, b: Reader) -> list[tuple[str, Any, Any]]:
    left, right = state_leaves(a.tree), state_leaves(b.tree)
    missing = "<absent>"
    changes = []
    for path in [*left, *(p for p in right if p not in left)]:
        va, vb = left.get(path, missing), right.get(path, missing)
        if not _same_value(va, vb):
            changes.append((path, va, vb))
    return changes


def compare(
    a: Reader,
    b: Reader,
    *,
    atol: float = 0.0,
    rtol: float = 0.0,
    progress: Progress | None = None,
    threads: int | None = None,
) -> DiffReport:
    """Diff two opened inputs (see :func:`diff`)."""
    keys_a, keys_b = a.keys(), b.keys()
    set_a, set_b = set(keys_a), set(keys_b)
    shapes: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = []
    dtypes: list[tuple[str, str, str]] = []
    todo: dict[tuple[str, str], str] = {}
    for name in keys_a:
        if name not in set_b:
            continue
        meta_a, meta_b = a.resolve(name), b.resolve(name)
        if meta_a.shape != meta_b.shape:
            shapes.append((name, meta_a.shape, meta_b.shape))
            continue
        if meta_a.dtype != meta_b.dtype:
            dtypes.append((name, meta_a.dtype_name, meta_b.dtype_name))
        # tied on both sides: the same bytes give the same answer, compare them once
        todo.setdefault((meta_a.name, meta_b.name), name)
    if progress is not None:
        progress.start(sum(a.tensors[stored].nbytes for stored, _ in todo))
    deltas = _deltas(a, b, list(todo.values()), atol, rtol, progress, threads)
    return DiffReport(
        a=a.label,
        b=b.label,
        atol=atol,
        rtol=rtol,
        only_a=tuple(k for k in keys_a if k not in set_b),
        only_b=tuple(k for k in keys_b if k not in set_a),
        shape_changes=tuple(shapes),
        dtype_changes=tuple(dtypes),
        tensors=tuple(deltas),
        state_changes=tuple(_state_changes(a, b)),
    )


def diff(
    a: str | os.PathLike[str],
    b: str | os.PathLike[str],
    *,
    atol: float = 0.0,
    rtol: float = 0.0,
    progress: Progress | None = None,
) -> DiffReport:
    """Compare two checkpoints of any supported kind (statevault, safetensors, .pt, sharded).

    Checksums are verified while reading, so a damaged file raises
    :class:`ChecksumMismatchError` rather than showing up as a numeric difference.

    Example::

        report = statevault.diff("step1000.safetensors", "step2000.safetensors", atol=1e-6)
        print(report.equal, [t.name for t in report.different])
    """
    if atol < 0 or rtol < 0:
        raise ValueError(f"atol and rtol must be >= 0, got atol={atol}, rtol={rtol}")
    with open_checkpoint(a) as left, open_checkpoint(b) as right:
        return compare(left, right, atol=atol, rtol=rtol, progress=progress)
