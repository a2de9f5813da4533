"""One safetensors file (statevault's or anyone's) as a :class:`Checkpoint`.

Only the header is read on open; tensors are read in parallel straight into destination
memory (checksums verified as they pass), or streamed in bounded chunks. Everything a load
needs (tensors, the nested-state tree, extra state, module versions) comes from the one
descriptor opened here: the file is never reopened by path, so a save that replaces it
meanwhile cannot mix two files into one load.

May be imported by the other reader modules and the layers above ``readers``.
"""

from __future__ import annotations

import json
from collections.abc import Container, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from statevault.engine.progress import Progress
from statevault.engine.reader import FileReader
from statevault.engine.storage import LOCAL_STORAGE, Storage, StoredObject
from statevault.errors import HeaderError, StateVaultError
from statevault.fileformat.dtypes import CODE_TO_DTYPE
from statevault.fileformat.metadata import (
    VaultInfo,
    decode,
    reject_constant,
    signed_digest,
    user_metadata,
)
from statevault.fileformat.table import TensorEntry, TensorTable
from statevault.fileformat.tree import Skeleton, check_tree, unflatten
from statevault.readers.base import Checkpoint, TensorInfo, top_level_objects, tree_versions
from statevault.readers.devices import mapped_device, usable_device
from statevault.readers.listing import CheckpointKind, FolderListing
from statevault.readers.mapped import map_safetensors
from statevault.readers.stored_dtypes import check_codes, encoded_signatures

DIRECT_DEVICES = ("cpu", "cuda")  # devices read_into fills without a full CPU copy
CHUNK_BYTES = 16 << 20  # working-set size for streamed reads: bounded, yet few syscalls
READ_BATCH_BYTES = 256 << 20  # whole-tensor reads between two progress ticks


class SafetensorsCheckpoint(Checkpoint):
    """A safetensors file opened for reading; statevault metadata is used when present."""

    path: Path | str  # a URL stays a string
    _reader: FileReader
    _vault: VaultInfo
    _table: TensorTable
    _encoded: dict[str, tuple[tuple[int, ...], torch.dtype]]
    _facts: tuple[dict[str, Skeleton], dict[str, Any] | None] | None

    @classmethod
    def from_file(
        cls,
        path: Path | str,
        *,
        listing: FolderListing | None = None,
        storage: Storage = LOCAL_STORAGE,
        opened: tuple[StoredObject, bytes] | None = None,
    ) -> SafetensorsCheckpoint:
        """Open ``path`` (already known to be safetensors, or damaged: the parser says how),
        from ``storage`` (a URL's object store; local disk by default); ``opened``: the
        object and its first bytes, when sniffing its kind already read them."""
        self = cls._blank()
        self._reader = FileReader(path, digest_header=signed_digest, storage=storage, opened=opened)
        try:
            self.path = self._reader.path
            self.label = str(self.path)
            self.file_size = self._reader.file_size  # of the open file, not of the path now
            self._listing = listing
            header = self._reader.header
            self._vault = decode(header, source=self.label, signed=self._reader.signed_digest)
            self._reader.block_bytes = self._vault.block_bytes  # what each digest covers
            self.format_version = self._vault.version
            self.kind = (
                CheckpointKind.SAFETENSORS
                if self.format_version is None
                else CheckpointKind.STATEVAULT
            )
            self.metadata = user_metadata(header.metadata, self.format_version)
            self.aliases = self._vault.aliases
            self._table = header.entries
            self._encoded = encoded_signatures(self._table, self._vault.dtypes, source=self.label)
            check_codes(self._table, self._encoded, source=self.label)
            self._facts = None
        except BaseException:
            self._reader.close()
            raise
        return self

    # -- header-level facts ---------------------------------------------------------------
    @property
    def vault(self) -> VaultInfo:
        """statevault's decoded metadata (empty for a plain safetensors file)."""
        return self._vault

    @property
    def reader(self) -> FileReader:
        """The open file and its parsed header, for whole-file scans (``verify``)."""
        return self._reader

    @property
    def has_checksums(self) -> bool:
        return self._vault.has_checksums

    @property
    def tensors(self) -> Mapping[str, TensorInfo]:
        """Stored tensors in file order: name -> :class:`TensorInfo`, made on access."""
        return _TensorInfos(self)

    def keys(self) -> list[str]:
        """Every tensor name, stored ones in file order, then aliases."""
        return [*self._table, *self.aliases]

    def signature(self, name: str) -> tuple[tuple[int, ...], torch.dtype]:
        """(shape, dtype) of ``name`` (aliases followed), cheaper than ``tensors[name]``."""
        stored = self.aliases.get(name, name)
        encoded = self._encoded.get(stored)
        if encoded is not None:
            return encoded
        row = self._table.row(stored)
        return self._table.shapes[row], CODE_TO_DTYPE[self._table.codes[row]]

    def describe(self, name: str) -> TensorInfo:
        """Header facts for the stored tensor ``name`` (no alias following)."""
        row = self._table.row(name)
        shape, dtype = self.signature(name)
        start = self._table.starts[row]
        return TensorInfo(
            name=name,
            dtype=dtype,
            shape=shape,
            nbytes=self._table.ends[row] - start,
            code=self._table.codes[row],
            checksum=self._vault.checksums.get(name),
            file=self.label,
            offset=self._reader.header.data_offset + start,
        )

    def resolve(self, name: str) -> TensorInfo:
        """Header facts for ``name``, following an alias to the stored tensor."""
        return self.describe(self.aliases.get(name, name))

    @property
    def tree(self) -> Skeleton | None:
        """The skeleton of the saved object (None for a plain safetensors file), checked
        node by node against the file's tensors: what ``load`` would refuse raises here."""
        tree = self._parsed_tree()
        if self._vault.has_tree:
            try:
                check_tree(tree, _Known(self._table, self.aliases))
            except HeaderError as exc:
                raise HeaderError(f"{self.path}: {exc}") from None
        return tree

    def _parsed_tree(self) -> Skeleton | None:
        """The tree parsed from the header text read on open (never re-read from disk)."""
        text = self._vault.tree_text
        if text is None:
            return self._vault.tree
        try:
            return json.loads(text, parse_constant=reject_constant)
        except (ValueError, RecursionError) as exc:
            raise HeaderError(
                f"{self.path}: statevault tree is not valid JSON or is nested too deeply "
                f"({type(exc).__name__}); header damaged"
            ) from None
        except MemoryError as exc:  # JSON of tiny containers: tens of bytes per character
            raise HeaderError(
                f"{self.path}: parsing the {len(text):,}-character statevault tree ran out of "
                "memory; it is hostile or larger than this process can hold"
            ) from exc

    def _tree_facts(self) -> tuple[dict[str, Skeleton], dict[str, Any] | None]:
        """The tree's top-level objects and module versions, worked out once per checkpoint:
        ``load_into`` asks for them per key, and only the small results are kept."""
        if self._facts is None:
            tree = self.tree
            self._facts = (top_level_objects(tree), tree_versions(tree))
        return self._facts

    def stored_object(self, key: str) -> tuple[bool, Any]:
        """A module's non-tensor extra state at ``key`` (see :meth:`Checkpoint.stored_object`)."""
        node = self._tree_facts()[0].get(key)
        if node is None:
            return False, None
        try:
            return True, unflatten(node, lambda name: self.read([name])[name])
        except HeaderError as exc:
            raise HeaderError(f"{self.path}: {exc}") from None

    def torch_versions(self) -> dict[str, Any] | None:
        """See :meth:`Checkpoint.torch_versions`."""
        return self._tree_facts()[1]

    # -- data -------------------------------------------------------------------------------
    def read_into(self, pairs: Iterable[tuple[str, torch.Tensor]], *, verify: bool = True) -> None:
        """Read stored tensors straight into the memory of contiguous CPU or CUDA tensors.

        Each destination must have the stored byte size. CPU destinations are filled with
        no intermediate copy; CUDA ones through a few pinned staging buffers, overlapping
        file reads with host-to-device copies (see ``FileReader.read_to_device``).
        """
        table = self._table
        by_row: list[torch.Tensor | None] = [None] * len(table)  # no job object per tensor
        again: list[tuple[str, torch.Tensor]] = []  # a second destination for one tensor
        device_jobs = []
        digests = self._vault.checksums if verify and self._vault.checksums else None
        for name, dest in pairs:
            row = table.row(name)
            if (
                not (dest.is_cpu or dest.is_cuda)  # DIRECT_DEVICES, without a torch.device
                or not dest.is_contiguous()
                or dest.numel() * dest.element_size() != table.ends[row] - table.starts[row]
            ):
                raise StateVaultError(f"internal error: bad destination for {name!r}")
            if not dest.is_cpu:
                device_jobs.append((table.entry(row), dest, digests[name] if digests else None))
            elif by_row[row] is None:
                by_row[row] = dest
            else:
                again.append((name, dest))
        self._reader.read_rows(by_row, digests)
        del by_row
        if again:
            self.read_into(again, verify=verify)
        by_device: dict[torch.device, list[tuple[TensorEntry, torch.Tensor, str | None]]] = {}
        for job in device_jobs:
            by_device.setdefault(job[1].device, []).append(job)
        for group in by_device.values():
            self._reader.read_to_device(group)

    def stream(
        self, name: str, *, chunk_bytes: int = CHUNK_BYTES, verify: bool = True
    ) -> Iterator[bytearray]:
        """The stored bytes of ``name`` in bounded fresh pieces, its checksum checked at the end."""
        stored = self.aliases.get(name, name)
        expected = self._vault.checksums.get(stored) if verify else None
        entry = self._table[stored]
        return self._reader.stream(entry, chunk_bytes=chunk_bytes, expected=expected)

    def chunks(self, name: str, *, elements: int, verify: bool = True) -> Iterator[torch.Tensor]:
        dtype = self.signature(name)[1]
        chunk_bytes = max(1, elements) * dtype.itemsize
        for buffer in self.stream(name, chunk_bytes=chunk_bytes, verify=verify):
            yield torch.frombuffer(buffer, dtype=torch.uint8).view(dtype)

    def empty_like_stored(self, name: str, *, device: torch.device | None = None) -> torch.Tensor:
        """An uninitialised tensor with the stored dtype and shape of ``name`` (CPU default)."""
        shape, dtype = self.signature(name)
        row = self._table.row(name)
        nbytes = self._table.ends[row] - self._table.starts[row]
        if name not in self._encoded:
            return torch.empty(shape, dtype=dtype, device=device)
        raw = torch.empty(nbytes, dtype=torch.uint8, device=device)
        return raw.view(dtype).reshape(shape)

    def read(
        self,
        names: Sequence[str] | None = None,
        *,
        verify: bool = True,
        progress: Progress | None = None,
        device: torch.device | None = None,
    ) -> dict[str, torch.Tensor]:
        """Read tensors (all by default) into fresh tensors; aliases share one tensor.

        With ``progress``, reads go in batches of about ``READ_BATCH_BYTES`` so it can tick
        while each batch still gets the parallel, direct-to-memory path.
        """
        wanted = self.keys() if names is None else list(names)
        unknown = [n for n in wanted if n not in self._table and n not in self.aliases]
        if unknown:
            raise KeyError(f"{self.path}: no tensor named {unknown[0]!r}")
        if progress is None:
            return self._read_batch(wanted, verify=verify, device=device)
        result: dict[str, torch.Tensor] = {}
        batch: list[str] = []
        size = 0
        table = self._table
        for i, name in enumerate(wanted):
            batch.append(name)
            row = table.row(self.aliases.get(name, name))
            size += table.ends[row] - table.starts[row]
            if size >= READ_BATCH_BYTES or i == len(wanted) - 1:
                result.update(self._read_batch(batch, verify=verify, device=device))
                progress.advance(size)
                batch, size = [], 0
        return result

    def _read_batch(
        self, wanted: list[str], *, verify: bool, device: torch.device | None
    ) -> dict[str, torch.Tensor]:
        stored = {self.aliases.get(n, n) for n in wanted}
        fresh = {
            name: self.empty_like_stored(name, device=device)
            for name in self._table
            if name in stored
        }
        self.read_into(fresh.items(), verify=verify)
        return {n: fresh[self.aliases.get(n, n)] for n in wanted}

    def fill(
        self,
        pairs: Iterable[tuple[str, torch.Tensor]],
        *,
        verify: bool,
        dtypes_match: bool = False,
    ) -> None:
        """Copy each named tensor into its destination (which has the same shape).

        Contiguous CPU/CUDA destinations of the stored dtype are read into directly;
        others through a temporary. ``dtypes_match``: the caller has checked that every
        destination has its tensor's stored dtype, so that is not looked up again per
        tensor (~10 ms for 20,000).
        """
        staged: list[tuple[str, torch.Tensor]] = []
        aliases = self.aliases
        signature = self.signature

        def direct() -> Iterator[tuple[str, torch.Tensor]]:
            # a generator, not a list: one tuple per tensor is 1 MiB for 20,000 tensors
            for name, dest in pairs:
                stored = aliases.get(name, name)
                if (
                    # dest.device.type in DIRECT_DEVICES, without building a torch.device
                    # and asking its type (240 -> 40 ns, for each of 20,000 tensors)
                    (dest.is_cpu or dest.is_cuda)
                    and dest.is_contiguous()
                    and (dtypes_match or dest.dtype == signature(stored)[1])
                ):
                    yield stored, dest
                else:
                    staged.append((stored, dest))

        self.read_into(direct(), verify=verify)
        if staged:
            # Other dtype or device: read into a temporary, then copy (and cast) across.
            fresh = self.read(list({n: None for n, _ in staged}), verify=verify)
            with torch.no_grad():
                for name, dest in staged:
                    dest.copy_(fresh[name])

    def mapped(
        self, names: Sequence[str] | None = None, *, verify: bool = True
    ) -> dict[str, torch.Tensor]:
        """See :meth:`Checkpoint.mapped` (``readers.mapped`` does it)."""
        return map_safetensors(self, names, verify=verify)

    def load(
        self, *, device: str | torch.device = "cpu", verify: bool = True, mmap: bool = False
    ) -> Any:
        """Rebuild exactly the object that was saved (a flat dict for plain safetensors)."""
        target = mapped_device(device) if mmap else usable_device(device)
        if mmap:
            tensors = self.mapped(verify=verify)
        elif target.type in DIRECT_DEVICES:
            tensors = self.read(verify=verify, device=target)  # CUDA: staged, no full CPU copy
        else:
            tensors = self.read(verify=verify)
            moved: dict[int, torch.Tensor] = {}  # keyed by identity so tied tensors stay tied
            for tensor in tensors.values():
                if id(tensor) not in moved:
                    moved[id(tensor)] = tensor.to(target)
            tensors = {n: moved[id(t)] for n, t in tensors.items()}
        if not self._vault.has_tree:
            return tensors
        tree = self._parsed_tree()
        try:
            # unflatten checks every node as it rebuilds it: the same check as ``tree``'s
            return unflatten(tree, tensors.__getitem__)
        except HeaderError as exc:
            raise HeaderError(f"{self.path}: {exc}") from None

    def close(self) -> None:
        self._reader.close()


class _Known(Container[str]):
    """Stored names and aliases, for :func:`check_tree`, without building their union."""

    def __init__(self, names: Container[str], aliases: Container[str]) -> None:
        self._names = names
        self._aliases = aliases

    def __contains__(self, name: object) -> bool:
        return name in self._names or name in self._aliases


class _TensorInfos(Mapping[str, TensorInfo]):
    """``SafetensorsCheckpoint.tensors``: a view that describes a tensor when asked, so an
    open 20,000-tensor checkpoint holds no per-tensor objects beyond its header table."""

    def __init__(self, checkpoint: SafetensorsCheckpoint) -> None:
        self._checkpoint = checkpoint
        self._table = checkpoint.reader.header.entries

    def __getitem__(self, name: str) -> TensorInfo:
        if name not in self._table:
            raise KeyError(name)
        return self._checkpoint.describe(name)

    def __contains__(self, name: object) -> bool:
        return name in self._table

    def __iter__(self) -> Iterator[str]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)
