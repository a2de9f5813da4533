"""verify(): re-read a checkpoint and check everything it records a checksum for.

Unlike ``load``, which stops at the first damaged tensor, verify keeps going and reports
them all, so one run tells you exactly what is broken. statevault files are hashed with the
load engine's read plan (``engine.scan``: batched reads, small reused buffers, a few
threads), so the work is linear in the number of tensors and memory stays flat for any file
size; torch zip files get the CRC-32 of every entry checked (``torchzip``). Damage to a real
checkpoint is a finding in the report; a file that is not a checkpoint at all raises.
May be imported by: the public package.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from statevault.engine.fsspec_storage import StorageOptions, storage_for
from statevault.engine.progress import Progress
from statevault.engine.scan import hash_rows
from statevault.engine.temps import describe_temporaries
from statevault.errors import CorruptFileError, NotACheckpointError
from statevault.fileformat.checksums import ALGORITHM
from statevault.readers.base import Checkpoint
from statevault.readers.distcp_checkpoint import DistcpCheckpoint
from statevault.readers.listing import CheckpointKind
from statevault.readers.safetensors_file import SafetensorsCheckpoint
from statevault.readers.sniff import FileKind, is_torch_zip, not_a_checkpoint, sniff
from statevault.readers.torch_file import TorchCheckpoint
from statevault.reports.display import shown
from statevault.reports.load_report import capped
from statevault.tools.arguments import checkpoint_source, thread_count
from statevault.tools.torchzip import check_zip

XXH3 = "checksums"  # xxh3-64 per tensor, plus the header digest
ZIP_CRC = "zip CRC-32 of every entry"
STRUCTURE = "structure"
NOTHING = "nothing to check"


@dataclass(frozen=True)
class BadTensor:
    """A tensor (or torch zip entry) whose bytes do not hash to the digest recorded for it."""

    name: str
    file: str
    expected: str
    found: str

    def __str__(self) -> str:
        return f"{shown(self.name)}: checksum expected {self.expected}, found {self.found}"


@dataclass(frozen=True)
class VerifyReport:
    """What verify found. ``ok`` is True only when nothing at all is wrong."""

    path: str
    kind: str | None = None  # None when the file could not even be opened as a checkpoint
    method: str = XXH3  # what was checked: XXH3, ZIP_CRC, STRUCTURE or NOTHING
    tensors_checked: int = 0
    bytes_checked: int = 0
    checksummed: bool = False  # False: only the structure could be checked
    header_digest: bool = False  # the whole header was covered by a digest
    header_error: str | None = None
    bad: tuple[BadTensor, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.header_error is None and not self.bad

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "ok": self.ok,
            "kind": self.kind,
            "method": self.method,
            "tensors_checked": self.tensors_checked,
            "bytes_checked": self.bytes_checked,
            "checksummed": self.checksummed,
            "header_digest": self.header_digest,
            "header_error": self.header_error,
            "bad": [
                {"name": b.name, "file": b.file, "expected": b.expected, "found": b.found}
                for b in self.bad
            ],
            "notes": list(self.notes),
        }

    def __str__(self) -> str:
        path = shown(self.path)
        if self.header_error is not None:
            error = shown(self.header_error, limit=len(self.header_error))
            return f"{path}: DAMAGED header: {error}"
        what = "zip entries" if self.method == ZIP_CRC else "tensor(s)"
        if self.bad:
            check = "CRC-32" if self.method == ZIP_CRC else f"{ALGORITHM} checksum"
            lines = [
                f"{path}: DAMAGED: {len(self.bad)} of {self.tensors_checked} {what} "
                f"fail their {check}:"
            ]
            lines += [f"  {line}" for line in capped(self.bad)]
            lines.append("Restore the file from a good copy; the others are intact.")
            return "\n".join(lines)
        if self.method == NOTHING:
            return "\n".join([f"{path}: OK (nothing to check)", *self.notes])
        lines = [
            f"{path}: OK ({self.method}): {self.tensors_checked} {what}, "
            f"{self.bytes_checked:,} bytes checked"
        ]
        return "\n".join([*lines, *self.notes])


def _check_file(
    checkpoint: SafetensorsCheckpoint, label: str, progress: Progress | None, threads: int | None
) -> tuple[list[BadTensor], int, int]:
    """(bad tensors in file order, tensors hashed, bytes hashed) for one safetensors file."""
    digests = checkpoint.vault.checksums
    if not digests:
        return [], 0, 0
    reader = checkpoint.reader
    found, count, nbytes = hash_rows(reader, digests, progress=progress, threads=threads)
    names = reader.header.entries.names
    bad = [BadTensor(names[row], label, digests[names[row]], digest) for row, digest in found]
    return bad, count, nbytes


def _checked_bytes(checkpoint: SafetensorsCheckpoint) -> int:
    """Bytes of tensor data hashed in a file (all of it when it records checksums)."""
    ends = checkpoint.reader.header.entries.ends
    return ends[-1] if checkpoint.has_checksums and len(ends) else 0


def _structure_note(label: str) -> str:
    return (
        f"{shown(label)}: no checksums recorded (not written by statevault, or saved "
        "with checksum=False): only the structure was checked (header parses, offsets "
        "contiguous and in bounds, file size matches); tensor bytes could not be verified"
    )


def _verify_files(
    label: str,
    kind: str,
    files: list[tuple[SafetensorsCheckpoint, str]],
    progress: Progress | None,
    threads: int | None,
) -> VerifyReport:
    """Every checksum of one file or of a sharded directory's shards (checkpoint, label)."""
    if progress is not None:
        progress.start(sum(_checked_bytes(checkpoint) for checkpoint, _ in files))
    bad: list[BadTensor] = []
    count = nbytes = 0
    notes: list[str] = []
    try:
        for checkpoint, file_label in files:
            found, checked, size = _check_file(checkpoint, file_label, progress, threads)
            bad += found
            count += checked
            nbytes += size
            if not checkpoint.has_checksums:
                notes.append(_structure_note(file_label))
                count += len(checkpoint.reader.header.entries)
    except CorruptFileError as exc:  # the file shrank or was truncated while being read
        return VerifyReport(path=label, kind=kind, header_error=str(exc))
    checksummed = all(checkpoint.has_checksums for checkpoint, _ in files)
    return VerifyReport(
        path=label,
        kind=kind,
        method=XXH3 if checksummed else STRUCTURE,
        tensors_checked=count,
        bytes_checked=nbytes,
        checksummed=checksummed,
        header_digest=all(c.vault.header_digest is not None for c, _ in files),
        bad=tuple(bad),
        notes=tuple(notes),
    )


def _verify_torch_zip(path: Path, progress: Progress | None, threads: int | None) -> VerifyReport:
    try:
        result = check_zip(path, progress=progress, threads=threads)
    except CorruptFileError as exc:
        return VerifyReport(path=str(path), kind="torch", method=ZIP_CRC, header_error=str(exc))
    if not result.recorded:
        return VerifyReport(
            path=str(path),
            kind="torch",
            method=NOTHING,
            notes=(
                f"{shown(str(path))}: torch zip file written without CRC-32s (every entry "
                "records 0): there is nothing to check",
            ),
        )
    return VerifyReport(
        path=str(path),
        kind="torch",
        method=ZIP_CRC,
        tensors_checked=result.entries,
        bytes_checked=result.nbytes,
        checksummed=True,
        bad=tuple(BadTensor(e.name, str(path), e.expected, e.found) for e in result.bad),
    )


def verify(
    source: str | os.PathLike[str],
    *,
    progress: Progress | None = None,
    threads: int | None = None,
    storage_options: StorageOptions | None = None,
) -> VerifyReport:
    """Check a checkpoint end to end; collect every problem.

    * statevault files: the header digest and every tensor's xxh3-64 checksum.
    * plain safetensors files: the structure (they record no checksums).
    * torch zip files (``.pt`` since torch 1.6): the CRC-32 of every zip entry.
    * legacy torch files: nothing to check (they record no checksums); read once through
      torch's weights-only loader.
    * sharded directories: each shard as above.
    * DCP's own ``FileSystemWriter`` directories: they record no checksums; each tensor
      piece is a ``torch.save`` archive whose zip CRC-32s are checked. Non-tensor values
      have nothing to check.
    * at a URL (``s3://...``, ``storage_options`` passed to fsspec): statevault and
      safetensors files, sharded and statevault DCP checkpoints, each file's header then
      its tensors fetched once, in large ranged requests on parallel threads.

    ``progress`` hears the bytes to check, then each chunk checked (from worker threads).
    Damage to a real checkpoint is a finding in the report; a path that is missing or not a
    checkpoint at all raises (:class:`CheckpointNotFoundError`, :class:`NotACheckpointError`).

    Example::

        report = statevault.verify("ckpt.safetensors")
        if not report.ok:
            print(report)  # names each damaged tensor
    """
    where = checkpoint_source(source)
    threads = thread_count(threads)
    if isinstance(where, str):
        return _verify_url(where, storage_options, progress, threads)
    storage_for(where, storage_options)  # refuses storage_options for a local path, as save
    try:
        kind = sniff(where) if where.is_file() else None
        if kind is FileKind.TORCH:
            if not is_torch_zip(where):
                raise not_a_checkpoint(where, "a zip archive without the data.pkl of a torch file")
            return _verify_torch_zip(where, progress, threads)
        if kind is FileKind.SAFETENSORS:
            # the Checkpoint alone: no per-tensor description objects (200k tensors: seconds)
            with SafetensorsCheckpoint(where) as checkpoint:
                checkpoint.tree  # noqa: B018  the one structure check load makes (raises)
                files = [(checkpoint, str(where))]
                return _verify_files(str(where), checkpoint.kind, files, progress, threads)
        if kind is FileKind.TORCH_LEGACY and progress is not None:
            progress.start(where.stat().st_size)  # torch reads it in full to check it loads
        opened = Checkpoint(where)
        if kind is FileKind.TORCH_LEGACY and progress is not None:
            progress.advance(where.stat().st_size)
    except NotACheckpointError:
        raise
    except CorruptFileError as exc:
        return VerifyReport(path=str(where), header_error=str(exc))
    with opened:
        if isinstance(opened, DistcpCheckpoint):
            return _verify_distcp(opened, progress)
        return _verify_leaves(where, opened.label, opened.kind, opened.leaves(), progress, threads)


def _verify_url(
    url: str,
    storage_options: StorageOptions | None,
    progress: Progress | None,
    threads: int | None,
) -> VerifyReport:
    """A checkpoint at a URL: opened once (headers only), then every leaf's tensors hashed."""
    try:
        opened = Checkpoint(url, storage_options=storage_options)
    except NotACheckpointError:
        raise
    except CorruptFileError as exc:
        return VerifyReport(path=url, header_error=str(exc))
    with opened:
        try:
            if isinstance(opened, SafetensorsCheckpoint):
                opened.tree  # noqa: B018  the one structure check load makes (raises)
        except CorruptFileError as exc:
            return VerifyReport(path=url, header_error=str(exc))
        return _verify_leaves(url, opened.label, opened.kind, opened.leaves(), progress, threads)


def _verify_leaves(
    where: Path | str,
    label: str,
    kind: str,
    leaves: list[Any],
    progress: Progress | None,
    threads: int | None,
) -> VerifyReport:
    """A sharded directory, a folder of several files, or one legacy torch file."""
    files = [(leaf, leaf.label) for leaf in leaves if isinstance(leaf, SafetensorsCheckpoint)]
    others = [leaf for leaf in leaves if not isinstance(leaf, SafetensorsCheckpoint)]
    if files:
        report = _verify_files(label, kind, files, progress, threads)
    else:
        report = VerifyReport(path=label, kind=kind, method=NOTHING)
    bad, notes = list(report.bad), list(report.notes)
    count, nbytes = report.tensors_checked, report.bytes_checked
    zips = 0
    for other in others:
        if (
            isinstance(other, TorchCheckpoint) and other.kind is CheckpointKind.TORCH
        ):  # zip: CRC-32s to check
            zipped = _verify_torch_zip(Path(other.label), None, threads)
            if zipped.header_error is not None:
                return replace(zipped, path=label, kind=kind)
            bad += zipped.bad
            count += zipped.tensors_checked
            nbytes += zipped.bytes_checked
            zips += 1
            notes.append(
                f"{shown(other.label)}: a torch pickle (zip format): the CRC-32 of each of its "
                f"{zipped.tensors_checked} entries checked"
            )
        else:
            notes.append(
                f"{shown(other.label)}: a torch pickle (legacy pre-1.6 format): it records no "
                "checksums, so there is nothing to verify; torch's weights-only loader read "
                "it without error"
            )
    if isinstance(where, Path) and where.is_dir():  # what killed saves left beside the shards
        notes += describe_temporaries(where)
    method = report.method if files or not zips else ZIP_CRC
    return replace(
        report,
        method=method,
        bad=tuple(bad),
        notes=tuple(notes),
        tensors_checked=count,
        bytes_checked=nbytes,
    )


def _verify_distcp(checkpoint: DistcpCheckpoint, progress: Progress | None) -> VerifyReport:
    """The CRC-32 zip records of every tensor piece; what else there is, said in notes."""
    pieces = [c.stored for item in checkpoint.dcp_tensors.values() for c in item.chunks]
    if progress is not None:
        progress.start(sum(stored.length for stored in pieces))
    bad: list[BadTensor] = []
    entries = nbytes = 0
    try:
        for piece in checkpoint.check_pieces(progress):
            entries += piece.entries
            nbytes += piece.nbytes
            bad += [BadTensor(f"{piece.key} ({e})", piece.file, x, f) for e, x, f in piece.bad]
    except CorruptFileError as exc:
        return VerifyReport(path=checkpoint.label, kind=checkpoint.kind, header_error=str(exc))
    notes = [
        f"{shown(checkpoint.label)}: DCP's FileSystemWriter format records no checksums of "
        f"its own; each of its {len(pieces)} tensor piece(s) is a torch.save archive, whose "
        "zip CRC-32s were checked"
    ]
    if checkpoint.objects:
        notes.append(
            f"{len(checkpoint.objects)} non-tensor value(s) (pickles, never unpickled) have "
            "nothing to check beyond lying inside their files"
        )
    return VerifyReport(
        path=checkpoint.label,
        kind=checkpoint.kind,
        method=ZIP_CRC,
        tensors_checked=entries,
        bytes_checked=nbytes,
        checksummed=True,
        bad=tuple(bad),
        notes=tuple(notes),
    )
