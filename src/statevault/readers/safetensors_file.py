"""An open checkpoint file: lazy header access, verified reads, rebuilding the saved object."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Container, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from statevault.engine.memory import HUGE_PAGE_MIN_BYTES, advise_huge_pages
from statevault.engine.reader import FileReader
from statevault.errors import (
    CheckpointKindError,
    CheckpointNotFoundError,
    CorruptFileError,
    DeviceUnavailableError,
    HeaderError,
    StateVaultError,
)
from statevault.fileformat.dtypes import CODE_TO_DTYPE, dtype_from_name, spec_for
from statevault.fileformat.metadata import (
    VaultInfo,
    decode,
    reject_constant,
    signed_digest,
    user_metadata,
)
from statevault.fileformat.table import TensorEntry, TensorTable
from statevault.fileformat.tree import Skeleton, check_tree, unflatten
from statevault.readers.sniff import describe

DIRECT_DEVICES = ("cpu", "cuda")  # devices read_into fills without a full CPU copy


def usable_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch.device, or a clear error when this process cannot use it."""
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise DeviceUnavailableError(
            f"device={device!r} is not a device torch knows: {exc}"
        ) from None
    if target.type == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError(
            f"device={device!r} was requested, but torch {torch.__version__} sees no CUDA device "
            "(torch.cuda.is_available() is False); load with device='cpu' instead"
        )
    if (
        target.type == "cuda"
        and target.index is not None
        and target.index >= torch.cuda.device_count()
    ):
        raise DeviceUnavailableError(
            f"device={device!r} was requested, but only {torch.cuda.device_count()} CUDA device(s) exist"
        )
    if target.type not in ("cpu", "cuda", "meta"):
        # torch.device() accepts any type name it knows ("xla", "mps", ...) whether or not a
        # backend is there; allocating nothing on it asks, before a byte of data is read.
        try:
            torch.empty(0, device=target)
        except (RuntimeError, NotImplementedError, ImportError, AssertionError) as exc:
            # torch's text goes on to list every backend it has: keep its first sentence
            first = (str(exc).splitlines() or [type(exc).__name__])[0].split(". ")[0]
            raise DeviceUnavailableError(
                f"device={device!r} cannot be used by this process (torch {torch.__version__}: "
                f"{first}); install and initialise its backend, or load with device='cpu'"
            ) from exc
    return target


@dataclass(frozen=True, slots=True)  # slots: one per tensor, half the memory without a __dict__
class TensorInfo:
    """What the header says about one stored tensor; reading it costs no tensor I/O."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    nbytes: int
    code: str  # the safetensors dtype code it is stored under
    offset: int  # absolute byte offset of its data in the file
    checksum: str | None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


class Checkpoint:
    """A checkpoint file opened for reading; only the header is read until you ask for data.

    Example::

        with statevault.Checkpoint("model.safetensors") as ckpt:
            print(ckpt.tensors["fc.weight"].shape)
            state = ckpt.load()
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        try:
            self._reader = FileReader(path, digest_header=signed_digest)
        except (CorruptFileError, CheckpointNotFoundError) as exc:
            what = describe(Path(path)) if Path(path).exists() else None
            if what is None:
                raise
            raise CheckpointKindError(
                f"{path}: is {what}. Checkpoint reads one safetensors file; open this with "
                "statevault.open_checkpoint(path) (load, load_into, check, load_model and the "
                "CLI accept it too)"
            ) from exc
        try:
            self.path: Path = self._reader.path
            header = self._reader.header
            self.vault: VaultInfo = decode(
                header, source=str(self.path), signed=self._reader.signed_digest
            )
            self.metadata: Mapping[str, str] = user_metadata(header.metadata, self.vault.version)
            # our metadata lives on decoded in ``vault``; the raw texts (the tree's is
            # megabytes for 20,000 tensors) need not stay alive twice
            self._reader.header = replace(header, metadata=self.metadata)
            self._table: TensorTable = header.entries
            self._encoded = self._encoded_signatures()
            self._check_codes()
        except BaseException:
            self._reader.close()
            raise

    def _encoded_signatures(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """True (shape, dtype) of the few tensors stored under another dtype code."""
        signatures = {}
        for name, recorded in self.vault.dtypes.items():
            _, code, shape, _, _ = self._table[name]
            dtype = dtype_from_name(recorded)
            spec = spec_for(dtype) if dtype is not None else None
            if dtype is None or spec is None:  # already rejected by decode(); keeps mypy honest
                raise HeaderError(f"{self.path}: tensor {name!r} has unknown dtype {recorded!r}")
            if spec.trailing is not None:
                if not shape or shape[-1] != spec.trailing:
                    raise HeaderError(
                        f"{self.path}: tensor {name!r} stored as {code}{list(shape)} "
                        f"cannot hold {recorded}; header damaged"
                    )
                shape = shape[:-1]
            signatures[name] = (shape, dtype)
        return signatures

    def _check_codes(self) -> None:
        """Every plain-stored code must be a dtype this torch has (checked once, not per read)."""
        unknown = set(self._table.codes) - CODE_TO_DTYPE.keys()
        if not unknown:
            return
        for name, code in zip(self._table.names, self._table.codes, strict=True):
            if code in unknown and name not in self._encoded:
                raise StateVaultError(
                    f"{self.path}: tensor {name!r} has dtype {code}, which this "
                    f"torch {torch.__version__} has no dtype for; upgrade torch to read it"
                )

    def signature(self, name: str) -> tuple[tuple[int, ...], torch.dtype]:
        """(shape, dtype) of ``name`` (aliases followed), cheaper than ``tensors[name]``."""
        stored = self.aliases.get(name, name)
        encoded = self._encoded.get(stored)
        if encoded is not None:
            return encoded
        row = self._table.row(stored)
        return self._table.shapes[row], CODE_TO_DTYPE[self._table.codes[row]]

    def _describe(self, name: str) -> TensorInfo:
        row = self._table.row(name)
        shape, dtype = self.signature(name)
        start = self._table.starts[row]
        return TensorInfo(
            name=name,
            dtype=dtype,
            shape=shape,
            nbytes=self._table.ends[row] - start,
            code=self._table.codes[row],
            offset=self._reader.header.data_offset + start,
            checksum=self.vault.checksums.get(name),
        )

    @property
    def tensors(self) -> Mapping[str, TensorInfo]:
        """Stored tensors in file order: name -> :class:`TensorInfo`, made on access."""
        return _TensorInfos(self)

    @property
    def reader(self) -> FileReader:
        """The open file and its parsed header, for whole-file scans (``verify``)."""
        return self._reader

    # -- context management -------------------------------------------------------------
    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- header-level facts ---------------------------------------------------------------
    @property
    def format_version(self) -> int | None:
        """statevault format version, or None for a plain safetensors file."""
        return self.vault.version

    @property
    def aliases(self) -> Mapping[str, str]:
        """Tied tensors: alias name -> the stored name whose data it shares."""
        return self.vault.aliases

    @property
    def tree(self) -> Skeleton | None:
        """The skeleton of the saved object (None for a plain safetensors file), checked
        node by node against the file's tensors: what ``load`` would refuse raises here."""
        tree = self._parsed_tree()
        if self.vault.has_tree:
            names = self._table
            aliases = self.aliases
            try:
                check_tree(tree, _Known(names, aliases))
            except HeaderError as exc:
                raise HeaderError(f"{self.path}: {exc}") from None
        return tree

    def _parsed_tree(self) -> Skeleton | None:
        text = self.vault.tree_text
        if text is None:
            return self.vault.tree
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

    @property
    def has_checksums(self) -> bool:
        return self.vault.has_checksums

    def keys(self) -> list[str]:
        """Every tensor name, stored ones in file order, then aliases."""
        return [*self._table, *self.aliases]

    def resolve(self, name: str) -> TensorInfo:
        """Header facts for ``name``, following an alias to the stored tensor."""
        return self._describe(self.aliases.get(name, name))

    # -- data ---------------------------------------------------------------------------------
    def _entry(self, name: str) -> TensorEntry:
        return self._table[name]

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
        digests = self.vault.checksums if verify and self.vault.checksums else None
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

    def stream(self, name: str, *, chunk_bytes: int, verify: bool = True) -> Iterator[bytearray]:
        """The stored bytes of ``name`` in bounded pieces, its checksum checked at the end."""
        stored = self.aliases.get(name, name)
        expected = self.vault.checksums.get(stored) if verify else None
        return self._reader.stream(self._entry(stored), chunk_bytes=chunk_bytes, expected=expected)

    def empty_like_stored(self, name: str, *, device: torch.device | None = None) -> torch.Tensor:
        """An uninitialised tensor with the stored dtype and shape of ``name`` (CPU default)."""
        shape, dtype = self.signature(name)
        row = self._table.row(name)
        nbytes = self._table.ends[row] - self._table.starts[row]
        if nbytes < HUGE_PAGE_MIN_BYTES and name not in self._encoded:
            # one tensor, not a byte tensor plus two views of it: for a million small
            # tensors that is ~1 GB less and a third of the calls (no huge pages to ask for)
            return torch.empty(shape, dtype=dtype, device=device)
        raw = torch.empty(nbytes, dtype=torch.uint8, device=device)
        advise_huge_pages(raw)  # about to be filled: fewer page faults
        return raw.view(dtype).reshape(shape)

    def read(
        self,
        names: Iterable[str] | None = None,
        *,
        verify: bool = True,
        device: torch.device | None = None,
    ) -> dict[str, torch.Tensor]:
        """Read tensors (all by default) into fresh tensors; aliases share one tensor."""
        wanted = list(self.keys() if names is None else names)
        unknown = [n for n in wanted if n not in self._table and n not in self.aliases]
        if unknown:
            raise KeyError(f"{self.path}: no tensor named {unknown[0]!r}")
        stored = {self.aliases.get(n, n) for n in wanted}
        fresh = {
            name: self.empty_like_stored(name, device=device)
            for name in self._table
            if name in stored
        }
        self.read_into(fresh.items(), verify=verify)
        return {n: fresh[self.aliases.get(n, n)] for n in wanted}

    def load(self, *, device: str | torch.device = "cpu", verify: bool = True) -> Any:
        """Rebuild exactly the object that was saved (a flat dict for plain safetensors)."""
        target = usable_device(device)
        if target.type in DIRECT_DEVICES:
            tensors = self.read(verify=verify, device=target)  # CUDA: staged, no full CPU copy
        else:
            tensors = self.read(verify=verify)
            moved: dict[int, torch.Tensor] = {}  # keyed by identity so tied tensors stay tied
            for tensor in tensors.values():
                if id(tensor) not in moved:
                    moved[id(tensor)] = tensor.to(target)
            tensors = {n: moved[id(t)] for n, t in tensors.items()}
        if not self.vault.has_tree:
            return tensors
        tree = self._parsed_tree()
        try:
            # unflatten checks every node as it rebuilds it: the same check as ``tree``'s
            return unflatten(tree, tensors.__getitem__)
        except HeaderError as exc:
            raise HeaderError(f"{self.path}: {exc}") from None


class _Known(Container[str]):
    """Stored names and aliases, for :func:`check_tree`, without building their union."""

    def __init__(self, names: Container[str], aliases: Container[str]) -> None:
        self._names = names
        self._aliases = aliases

    def __contains__(self, name: object) -> bool:
        return name in self._names or name in self._aliases


class _TensorInfos(Mapping[str, TensorInfo]):
    """``Checkpoint.tensors``: a view that describes a tensor when asked, so an open
    20,000-tensor checkpoint holds no per-tensor objects beyond its header table."""

    def __init__(self, checkpoint: Checkpoint) -> None:
        self._checkpoint = checkpoint
        self._table = checkpoint._table

    def __getitem__(self, name: str) -> TensorInfo:
        if name not in self._table:
            raise KeyError(name)
        return self._checkpoint._describe(name)

    def __contains__(self, name: object) -> bool:
        return name in self._table

    def __iter__(self) -> Iterator[str]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)
