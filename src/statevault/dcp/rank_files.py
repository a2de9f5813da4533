"""One rank file of a DCP checkpoint, opened through a storage: header first, then ranges.

The header is fetched with one small read (``HEAD_GUESS`` bytes, enough for the header of
a rank file of a few thousand chunks) and a second only when it is longer; after that
only the byte ranges a load asks for are read. A chunk read whole is checked against the
xxh3-64 digest its file records (one per block of ``block_bytes`` since format 3); a part
of a chunk is not, which is why resharded loads that cut a chunk read it unverified.
May be imported by anything in ``statevault.dcp``.
"""

from __future__ import annotations

from statevault.engine.memory import ByteBuffer
from statevault.engine.storage import Storage, StoredObject
from statevault.engine.verified import check_bytes, ended_early
from statevault.errors import HeaderError, TruncatedFileError
from statevault.fileformat.container import PREFIX_BYTES, Header, header_length, parse_header
from statevault.fileformat.metadata import VaultInfo, decode, signed_digest
from statevault.fileformat.table import TensorEntry

HEAD_GUESS = 64 << 10


class RankFile:
    """An open rank file: its validated header and statevault metadata, and range reads."""

    def __init__(self, storage: Storage, name: str) -> None:
        self.name = name
        self.object: StoredObject = storage.open(name)
        try:
            self.header, self.info = self._read_header()
        except BaseException:
            self.object.close()
            raise

    def _read_header(self) -> tuple[Header, VaultInfo]:
        size = self.object.size
        head = self.object.read(min(size, HEAD_GUESS), 0)
        length = header_length(head[: PREFIX_BYTES + 1], file_size=size, source=self.name)
        raw = head[PREFIX_BYTES : PREFIX_BYTES + length]
        if len(raw) < length:
            raw += self.object.read(length - len(raw), PREFIX_BYTES + len(raw))
        if len(raw) != length:
            raise TruncatedFileError(f"{self.name}: ended inside its header; it is truncated")
        header = parse_header(raw, file_size=size, source=self.name)
        info = decode(header, source=self.name, signed=signed_digest(head[:PREFIX_BYTES], raw))
        if info.version is None:
            raise HeaderError(
                f"{self.name}: has no statevault metadata; a DCP rank file is always written "
                "by statevault, so this one was replaced (save the checkpoint again)"
            )
        return header, info

    def entry(self, key: str) -> TensorEntry:
        """The stored tensor ``key`` (following a tie to the tensor that holds the bytes)."""
        stored = self.info.aliases.get(key, key)
        if stored not in self.header.entries:
            raise HeaderError(
                f"{self.name}: holds no tensor {key!r}, which the checkpoint index names; the "
                "file was replaced after the index was written (save the checkpoint again)"
            )
        return self.header.entries[stored]

    def read_into(self, entry: TensorEntry, view: memoryview, at: int) -> None:
        """Fill ``view`` with the entry's bytes from ``at`` (relative to the entry's start)."""
        offset = self.header.data_offset + entry.start + at
        done = 0
        while done < len(view):
            buffers: list[ByteBuffer] = [view[done:]]
            got = self.object.readv(buffers, offset + done)
            if got <= 0:
                raise ended_early(self.name, entry.name, at + done, entry.nbytes)
            done += got

    def check_whole(self, entry: TensorEntry, view: memoryview) -> None:
        """Raise ``ChecksumMismatchError`` unless ``view`` (the whole entry) has its digest."""
        expected = self.info.checksums.get(entry.name)
        check_bytes(self.name, entry.name, expected, view, self.info.block_bytes)

    def close(self) -> None:
        self.object.close()
