"""stats(): what the numbers in a checkpoint look like, and whether they are healthy.

Every stored tensor is streamed in chunks of :data:`CHUNK_ELEMENTS` elements through the
reader's ``chunks`` (checksums checked on the way where the file records them), so memory
stays at a few chunks per thread whatever the tensor sizes; tensors are spread over a few
threads (torch's kernels and the reads release the GIL). The moments are merged in float64
(:mod:`statevault.tools.moments`); the health rules (:mod:`statevault.tools.health_flags`)
then turn the numbers into flags. Used by the public API and the CLI.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import replace
from functools import partial

import torch

from statevault.engine.fsspec_storage import StorageOptions
from statevault.engine.progress import Progress
from statevault.engine.scan import default_threads, run_parallel
from statevault.errors import ChecksumMismatchError, InvalidArgumentError
from statevault.readers.base import Checkpoint, TensorInfo
from statevault.reports.stats_report import DAMAGED, Flag, StatsReport, TensorStats, natural_key
from statevault.tools.health_flags import shape_flags, sibling_flags, value_flags
from statevault.tools.inspection import plain_state
from statevault.tools.moments import RunningHistogram, RunningMoments

CHUNK_ELEMENTS = 1 << 17  # 1 MiB of float64 per chunk: the arithmetic stays in a core's L2
BATCH_BYTES = 4 << 20  # small tensors go to the threads in batches of about this many bytes
BATCH_TENSORS = 256  # ... and at most this many
MAX_BINS = 4096


# Packed sub-byte dtypes torch stores but cannot convert to numbers
NO_ARITHMETIC = frozenset(
    dt for dt in (getattr(torch, "float4_e2m1fn_x2", None),) if isinstance(dt, torch.dtype)
)


class _Job:
    """What the worker threads share: the reader, the histogram setting, the progress hook."""

    def __init__(self, reader: Checkpoint, bins: int, progress: Progress | None) -> None:
        self.reader, self.bins, self.progress = reader, bins, progress

    def _advance(self, nbytes: int) -> None:
        if self.progress is not None:
            self.progress.advance(nbytes)

    def measure(self, meta: TensorInfo) -> TensorStats:
        """One tensor's statistics, streamed once (twice for a histogram of a large one)."""
        base = TensorStats(meta.name, meta.dtype_name, meta.shape, meta.nbytes)
        if meta.dtype in NO_ARITHMETIC:
            self._advance(meta.nbytes)
            return base
        moments = RunningMoments()
        first: torch.Tensor | None = None
        pieces = 0
        flags: list[Flag] = []
        try:
            for chunk in self.reader.chunks(meta.name, elements=CHUNK_ELEMENTS, verify=True):
                moments.add(chunk)
                first, pieces = chunk, pieces + 1
                self._advance(chunk.numel() * chunk.element_size())
        except ChecksumMismatchError as exc:  # the numbers above are of the damaged bytes
            flags.append(Flag("checksum", DAMAGED, f"{exc}; restore the file from a good copy"))
        numbers = moments.result()
        stats = replace(
            base,
            values=moments.values,
            nan=moments.nan,
            posinf=moments.posinf,
            neginf=moments.neginf,
            zeros=moments.zeros,
            minimum=numbers.minimum,
            maximum=numbers.maximum,
            mean=numbers.mean,
            std=numbers.std,
            norm=numbers.norm,
        )
        low, high = numbers.minimum, numbers.maximum
        if self.bins and low is not None and high is not None:
            histogram = RunningHistogram(low, high, self.bins)
            if pieces == 1 and first is not None:
                histogram.add(first)  # a one-chunk tensor: no second read
            else:
                for chunk in self.reader.chunks(meta.name, elements=CHUNK_ELEMENTS, verify=False):
                    histogram.add(chunk)
            stats = replace(stats, histogram=histogram.result())
        return replace(stats, flags=(*flags, *value_flags(stats), *shape_flags(stats)))

    def batch(self, metas: list[TensorInfo], stop: threading.Event) -> list[TensorStats]:
        found = []
        for meta in metas:
            if stop.is_set():
                break
            found.append(self.measure(meta))
        return found


def _tasks(
    job: _Job, metas: list[TensorInfo]
) -> list[Callable[[threading.Event], list[TensorStats]]]:
    """Large tensors one task each, small ones in batches; in the reader's order."""
    tasks: list[Callable[[threading.Event], list[TensorStats]]] = []
    batch: list[TensorInfo] = []
    size = 0
    for meta in metas:
        if meta.numel > CHUNK_ELEMENTS:
            if batch:
                tasks.append(partial(job.batch, batch))
                batch, size = [], 0
            tasks.append(partial(job.batch, [meta]))
            continue
        batch.append(meta)
        size += meta.nbytes
        if size >= BATCH_BYTES or len(batch) >= BATCH_TENSORS:
            tasks.append(partial(job.batch, batch))
            batch, size = [], 0
    if batch:
        tasks.append(partial(job.batch, batch))
    return tasks


def _check_bins(bins: int) -> None:
    if isinstance(bins, bool) or not isinstance(bins, int) or not 0 <= bins <= MAX_BINS:
        raise InvalidArgumentError(
            f"histogram_bins must be an int between 0 (none) and {MAX_BINS}, got {bins!r}"
        )


def _notes(reader: Checkpoint, checksummed: bool) -> list[str]:
    notes = []
    if not checksummed:
        notes.append(
            f"{reader.label}: not every tensor records a checksum ({reader.kind}), so the "
            "numbers are of the bytes as they are; statevault verify checks what can be checked"
        )
    if reader.aliases:
        notes.append(
            f"{len(reader.aliases):,} tied name(s) share a stored tensor and are listed once"
        )
    return notes


def stats_of(
    reader: Checkpoint,
    *,
    histogram_bins: int = 0,
    threads: int | None = None,
    progress: Progress | None = None,
) -> StatsReport:
    """The statistics of an already opened checkpoint (see :func:`stats`)."""
    _check_bins(histogram_bins)
    metas = sorted(reader.tensors.values(), key=lambda meta: natural_key(meta.name))
    if progress is not None:
        progress.start(sum(meta.nbytes for meta in metas))
    job = _Job(reader, histogram_bins, progress)
    workers = max(1, threads or default_threads())
    found = [t for part in run_parallel(_tasks(job, metas), workers) for t in part]
    outliers = sibling_flags(found)
    found = [
        replace(t, flags=(*t.flags, outliers[t.name])) if t.name in outliers else t for t in found
    ]
    checksummed = bool(metas) and all(meta.checksum is not None for meta in metas)
    return StatsReport(
        path=reader.label,
        kind=reader.kind,
        tensors=tuple(found),
        checksummed=checksummed,
        metadata=dict(reader.metadata),
        state=plain_state(reader.tree),
        notes=tuple(_notes(reader, checksummed)),
    )


def stats(
    source: str | os.PathLike[str],
    *,
    histogram_bins: int = 0,
    threads: int | None = None,
    progress: Progress | None = None,
    storage_options: StorageOptions | None = None,
) -> StatsReport:
    """Health statistics of every tensor in a checkpoint, with flags that explain problems.

    Per tensor: NaN/±Inf counts, min, max, mean, std, L2 norm and the fraction of zeros
    (over the finite values, in float64), streamed in bounded memory on a few threads and
    checked against the file's checksums on the way. Flags say in plain words what looks
    wrong: NaN/Inf (``report.damaged``), an optimizer second moment with NaN, half-precision
    overflow, all zeros, constant values, a norm far from the same layer's in other blocks.
    ``histogram_bins`` > 0 also counts each tensor's values in that many bins (for the HTML
    report; large tensors are read twice). Reads every input ``Checkpoint`` opens, URLs
    too (``storage_options`` passed to fsspec).

    Example::

        report = statevault.stats("ckpt.safetensors")
        if report.damaged:
            print(report)  # names each broken tensor and why
    """
    _check_bins(histogram_bins)
    with Checkpoint(source, storage_options=storage_options) as reader:
        return stats_of(reader, histogram_bins=histogram_bins, threads=threads, progress=progress)
