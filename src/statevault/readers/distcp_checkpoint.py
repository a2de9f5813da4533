"""A directory written by DCP's own ``FileSystemWriter`` as one :class:`Checkpoint` of full tensors.

``dcp.save(state, checkpoint_id=path)`` leaves ``.metadata`` (a pickle, decoded by
``fileformat.distcp_metadata`` without unpickling anything it names) and ``__R_N.distcp``
files. In torch's default serialisation each tensor piece is a complete ``torch.save``
archive at an offset of a ``.distcp`` file: it is read with ``pread`` and loaded with
torch's weights-only loader, then placed in a tensor of the global shape. Non-tensor values
(``torch.save`` pickles of anything) are listed in ``metadata["dcp.objects"]``, never
unpickled.

The format records no checksums of its own. What can be checked is what the archives hold:
the CRC-32 zip records for each entry (torch writes them by default), checked before a
piece is loaded when ``verify`` is on, and by ``verify`` for every piece. May be imported
by ``readers.dispatch`` and above.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from statevault.engine.progress import Progress
from statevault.engine.storage import open_regular, read_regular
from statevault.engine.verified import ended_early, pread_exact
from statevault.errors import ChecksumMismatchError, CorruptFileError, HeaderError
from statevault.fileformat.distcp_metadata import (
    MAX_METADATA_BYTES,
    METADATA_NAME,
    DistcpBytes,
    DistcpTensor,
    StoredRange,
    decode,
)
from statevault.fileformat.dtypes import spec_for
from statevault.readers.base import Checkpoint, TensorInfo
from statevault.readers.dcp_checkpoint import AssembledCheckpoint, place_chunk
from statevault.readers.listing import CheckpointKind
from statevault.readers.weights_only import WeightsOnlyRefusal

ZIP_MAGIC = b"PK\x03\x04"  # what torch.save's archive, one per tensor piece, starts with


def is_distcp_directory(path: Path) -> bool:
    return (path / METADATA_NAME).is_file()


@dataclass(frozen=True)
class PieceCheck:
    """What checking one tensor piece's archive found (``bad`` empty when intact)."""

    key: str
    file: str
    entries: int  # zip entries whose CRC-32 was checked
    nbytes: int
    bad: tuple[tuple[str, str, str], ...] = ()  # (entry, expected CRC, found)


class DistcpCheckpoint(AssembledCheckpoint):
    """The full tensors of a ``FileSystemWriter`` directory, by state-dict key."""

    _items: dict[str, DistcpTensor]
    _objects: dict[str, DistcpBytes]
    _fds: dict[str, int]
    _tensors: dict[str, TensorInfo]

    @classmethod
    def from_directory(cls, directory: Path) -> DistcpCheckpoint:
        """Decode ``.metadata`` and open the ``.distcp`` files it names (ranges checked)."""
        self = cls._blank()
        self._fds = {}
        metadata_path = directory / METADATA_NAME
        raw = read_regular(metadata_path, limit=MAX_METADATA_BYTES)
        index = decode(raw, source=str(metadata_path))
        self.label = str(directory)
        self.kind = CheckpointKind.DISTCP
        self.aliases = {}
        self._items = {k: v for k, v in index.items.items() if isinstance(v, DistcpTensor)}
        self._objects = {k: v for k, v in index.items.items() if isinstance(v, DistcpBytes)}
        self.metadata = {"dcp.objects": json.dumps(list(self._objects))} if self._objects else {}
        sizes: dict[str, int] = {}
        try:
            for name in index.files:
                self._fds[name], status = open_regular(directory / name)
                sizes[name] = status.st_size
        except BaseException:
            self.close()
            raise
        self.file_size = len(raw) + sum(sizes.values())
        for key, item in index.items.items():
            ranges = (
                [item.stored] if isinstance(item, DistcpBytes) else [c.stored for c in item.chunks]
            )
            for stored in ranges:
                if stored.offset + stored.length > sizes[stored.file]:
                    self.close()
                    raise CorruptFileError(
                        f"{directory / stored.file}: {key}: stored at bytes {stored.offset}.."
                        f"{stored.offset + stored.length}, but the file has {sizes[stored.file]} "
                        "bytes; it is truncated (copy it again from where it was saved)"
                    )
        self._tensors = {key: self._info(key, item) for key, item in self._items.items()}
        return self

    def _info(self, key: str, item: DistcpTensor) -> TensorInfo:
        numel = 1
        for size in item.shape:
            numel *= size
        spec = spec_for(item.dtype)
        return TensorInfo(
            name=key,
            dtype=item.dtype,
            shape=item.shape,
            nbytes=numel * item.dtype.itemsize,
            code=None if spec is None else spec.code,
            checksum=None,
            file=self.label,
        )

    @property
    def tensors(self) -> Mapping[str, TensorInfo]:
        return self._tensors

    @property
    def has_checksums(self) -> bool:
        return False  # DCP records none; the archives' CRC-32s are what verify checks

    def leaves(self) -> list[Checkpoint]:
        return [self]

    def _payload(self, key: str, stored: StoredRange) -> bytes:
        buffer = bytearray(stored.length)
        where = os.path.join(self.label, stored.file)
        pread_exact(
            self._fds[stored.file],
            memoryview(buffer),
            stored.offset,
            lambda done: ended_early(where, key, done, stored.length),
        )
        return bytes(buffer)

    def _piece(self, key: str, stored: StoredRange, verify: bool) -> torch.Tensor:
        payload = self._payload(key, stored)
        where = os.path.join(self.label, stored.file)
        if not payload.startswith(ZIP_MAGIC):
            raise not_an_archive(where, key, f"starts with {payload[:4]!r}")
        if verify:
            bad = crc_problems(payload, where, key)[1]
            if bad:
                entry, expected, found = bad[0]
                raise ChecksumMismatchError(
                    f"{where}: {key}: zip entry {entry}: CRC-32 {expected} was recorded, the "
                    f"bytes {found}: the piece is damaged; restore the file from a good copy"
                )
        try:
            loaded = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise WeightsOnlyRefusal(
                f"{where}: {key}: torch's weights-only loader refused the stored piece ({exc}); "
                "a tensor piece written by DCP holds only a tensor",
                reason="not a tensor",
            ) from None
        except (RuntimeError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise CorruptFileError(f"{where}: {key}: the stored piece is damaged ({exc})") from None
        if not isinstance(loaded, torch.Tensor):
            raise HeaderError(f"{where}: {key}: holds a {type(loaded).__name__}, not a tensor")
        return loaded

    def _assemble(self, key: str, verify: bool) -> torch.Tensor:
        item = self._items[key]
        whole = torch.empty(item.shape, dtype=item.dtype)
        for chunk in item.chunks:
            part = self._piece(key, chunk.stored, verify)
            if part.dtype != item.dtype or tuple(part.shape) != chunk.sizes:
                raise HeaderError(
                    f"{os.path.join(self.label, chunk.stored.file)}: {key}: the piece at "
                    f"{chunk.offsets} holds {part.dtype} {tuple(part.shape)}, the metadata "
                    f"says {item.dtype} {chunk.sizes}"
                )
            place_chunk(whole, chunk.offsets, part)
        return whole

    def check_pieces(self, progress: Progress | None = None) -> Iterator[PieceCheck]:
        """The CRC-32 check of every tensor piece, in key order (what ``verify`` reports)."""
        for key, item in self._items.items():
            for chunk in item.chunks:
                where = os.path.join(self.label, chunk.stored.file)
                payload = self._payload(key, chunk.stored)
                entries, bad = crc_problems(payload, where, key)
                if progress is not None:
                    progress.advance(chunk.stored.length)
                yield PieceCheck(key, where, entries, len(payload), tuple(bad))

    @property
    def dcp_tensors(self) -> Mapping[str, DistcpTensor]:
        """Each tensor's chunks and where they are stored."""
        return self._items

    @property
    def objects(self) -> Mapping[str, DistcpBytes]:
        """The non-tensor values: stored, never unpickled."""
        return self._objects

    def close(self) -> None:
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)


def crc_problems(payload: bytes, where: str, key: str) -> tuple[int, list[tuple[str, str, str]]]:
    """(entries checked, [(entry, expected, found)]) for one ``torch.save`` archive.

    An entry recording CRC 0 is not checked (torch can be told not to compute them).
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(payload))
    except zipfile.BadZipFile as exc:
        raise not_an_archive(where, key, str(exc)) from None
    checked = 0
    bad = []
    with archive:
        for info in archive.infolist():
            if info.CRC == 0:
                continue
            checked += 1
            try:
                archive.read(info)  # zipfile computes the CRC-32 as it reads, and compares
            except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
                bad.append((info.filename, f"{info.CRC:08x}", f"differs ({exc})"))
    return checked, bad


def not_an_archive(where: str, key: str, detail: str) -> CorruptFileError:
    return CorruptFileError(
        f"{where}: {key}: the stored piece is not a torch.save archive ({detail}); the file "
        "is damaged, or was written with FileSystemWriter(serialization_format=SAFETENSORS), "
        "which statevault does not read (only the default, TORCH_SAVE)"
    )
