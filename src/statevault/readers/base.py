"""``Checkpoint``: the one reader type every checkpoint opens as, and ``TensorInfo``.

``statevault.Checkpoint(source)`` opens a statevault or safetensors file, a torch
``.pt``/``.bin`` file, a shard index or sharded directory, a Hugging Face / Trainer /
accelerate folder, a statevault DCP directory, any of those files or directories at a URL
(``s3://...``, with ``storage_options``) or an in-memory state dict, and returns the implementation for it (as
``pathlib.Path(...)`` returns a ``PosixPath``). Each implementation lives in its own module
and is built complete by its own classmethod; this module holds what they share. ``load``,
``load_into``, ``check``, ``build_model`` and the CLI tools all read through it, so each
format is handled in one place. A checkpoint answers from header facts (names, shapes,
dtypes) without reading tensor data; data is read when asked for.

May be imported by the reader implementations and the layers above ``readers``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import torch

from statevault.engine.fsspec_storage import is_url
from statevault.engine.progress import Progress
from statevault.engine.ties import memory_identity
from statevault.errors import CheckpointKindError, HeaderError
from statevault.fileformat.dtypes import dtype_name
from statevault.fileformat.skeleton import DICT, TENSOR, children, read_node, walk
from statevault.fileformat.tree import Skeleton, unflatten
from statevault.readers.devices import mapped_device, usable_device
from statevault.readers.listing import CheckpointKind, EntryStatus, FolderEntry, FolderListing
from statevault.readers.sniff import describe

if TYPE_CHECKING:
    from statevault.readers.slices import TensorSlice

# what Checkpoint(...) opens; load_into and friends also take an open Checkpoint
CheckpointSource = str | os.PathLike[str] | Mapping[str, Any]


@dataclass(frozen=True, slots=True)  # slots: one per tensor, half the memory without a __dict__
class TensorInfo:
    """Header-level facts about one stored tensor; reading them costs no tensor I/O."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    nbytes: int
    code: str | None  # safetensors dtype code; None when statevault cannot store the dtype
    checksum: str | None  # recorded xxh3-64 digest, if the file has one
    file: str  # the file holding the bytes (differs per shard)
    offset: int | None = None  # absolute byte offset of the data in ``file``, when stored raw

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def dtype_name(self) -> str:
        return dtype_name(self.dtype)


class Checkpoint:
    """An opened checkpoint: header facts now, tensor data on demand. Close when done.

    ``Checkpoint(source)`` returns the implementation ``source`` needs (see the module
    docstring); ``weights=True`` opens only a folder's model weights; ``storage_options``
    (a dict passed to fsspec: credentials, ``endpoint_url``...) configures a URL's store. Calling an
    implementation class directly opens the same way and refuses a source of another kind.

    Example::

        with statevault.Checkpoint("out/checkpoint-500") as ckpt:
            print([(e.file, e.key, e.status) for e in ckpt.contents])
            shape, dtype = ckpt.signature("model.fc.weight")  # no data read
            state = ckpt.load()  # {"model": ..., "optimizer": ..., "rng_state": ...}

    Implementations set ``kind``, ``label``, ``metadata``, ``aliases`` and ``file_size`` when
    built, and provide ``tensors``, ``read``, ``chunks`` and ``close``; everything else has a
    generic form here that a format may replace with a faster one.
    """

    kind: CheckpointKind
    label: str
    format_version: int | None = None
    metadata: Mapping[str, str]
    aliases: Mapping[str, str]
    file_size: int
    _listing: FolderListing | None = None  # set when opened as part of a folder

    def __new__(
        cls,
        source: CheckpointSource,
        *,
        weights: bool = False,
        storage_options: Mapping[str, Any] | None = None,
    ) -> Self:
        # dispatch imports every implementation module, and each of them imports this one
        from statevault.readers.dispatch import open_any

        opened = open_any(source, weights=weights, storage_options=storage_options)
        if isinstance(opened, cls):
            return opened  # no __init__ anywhere: Python's call to it is object's no-op
        opened.close()
        local = None if is_url(opened.label) else describe(Path(opened.label))
        what = local or f"a {opened.kind} checkpoint"
        raise CheckpointKindError(
            f"{opened.label}: is {what}, which {cls.__name__} does not read; open it with "
            "statevault.Checkpoint(source), which returns the reader it needs"
        )

    @classmethod
    def _blank(cls) -> Self:
        """An instance for an implementation's constructor to fill (``__new__`` opens)."""
        return object.__new__(cls)

    @property
    def tensors(self) -> Mapping[str, TensorInfo]:
        """Stored tensors (aliases excluded): name -> :class:`TensorInfo`."""
        raise NotImplementedError

    @property
    def tree(self) -> Skeleton | None:
        """The skeleton of the saved object, or None for a flat name -> tensor checkpoint."""
        return None

    @property
    def folder_contents(self) -> tuple[FolderEntry, ...] | None:
        """The listing of the folder this was opened from (None when opened as a file)."""
        return None if self._listing is None else self._listing.entries(self.kind)

    @property
    def contents(self) -> tuple[FolderEntry, ...]:
        """The files this checkpoint was read from, and what each became (see FolderEntry)."""
        listed = self.folder_contents
        if listed is not None:
            return listed
        return (FolderEntry(self.label, None, self.kind, EntryStatus.LOADED),)

    @property
    def has_checksums(self) -> bool:
        return any(meta.checksum is not None for meta in self.tensors.values())

    def keys(self) -> list[str]:
        """Every tensor name: stored ones, then aliases."""
        return [*self.tensors, *self.aliases]

    def resolve(self, name: str) -> TensorInfo:
        """Header facts for ``name``, following an alias to the stored tensor."""
        return self.tensors[self.aliases.get(name, name)]

    def signature(self, name: str) -> tuple[tuple[int, ...], torch.dtype]:
        """(shape, dtype) of ``name`` without reading data."""
        meta = self.resolve(name)
        return meta.shape, meta.dtype

    def get_slice(self, name: str) -> TensorSlice:
        """A lazy handle on tensor ``name``: indexing it reads only that part (as safetensors).

        Example::

            with statevault.Checkpoint("model.safetensors") as ckpt:
                rows = ckpt.get_slice("embed.weight")[1000:2000]  # reads those rows only
        """
        from statevault.readers.slices import TensorSlice  # it reads through this module

        return TensorSlice(self, name)

    def weights(self) -> Checkpoint:
        """The model weights in this checkpoint (itself, except for a training folder)."""
        return self

    def leaves(self) -> list[Checkpoint]:
        """The single-file checkpoints this one is made of (shards, a folder's files)."""
        return [self]

    def read(
        self,
        names: Sequence[str] | None = None,
        *,
        verify: bool = True,
        progress: Progress | None = None,
    ) -> dict[str, torch.Tensor]:
        """The named keys (all by default) as a flat name -> tensor dict, tied ones shared."""
        raise NotImplementedError

    def mapped(
        self, names: Sequence[str] | None = None, *, verify: bool = True
    ) -> dict[str, torch.Tensor]:
        """The named keys (all by default) as views of a private, copy-on-write file mapping.

        What ``mmap=True`` loads hand out: processes mapping one file share the page cache's
        copy of its bytes, and a write to a tensor stays in the process that made it. Each
        tensor is checked from the mapping first (``verify``). Safetensors files (and sharded
        sets and folders of them) can be mapped; other kinds raise ``CheckpointKindError``.

        Example::

            with statevault.Checkpoint("model.safetensors") as ckpt:
                weights = ckpt.mapped()  # no copy; the mapping outlives the checkpoint
        """
        path = Path(self.label)
        what = (describe(path) if path.is_file() else None) or f"a {self.kind} checkpoint"
        raise CheckpointKindError(
            f"{self.label}: is {what}, which cannot be memory-mapped: mmap=True maps "
            f"safetensors files. Load it without mmap=True, or convert it once with "
            f"statevault.convert({self.label!r}, 'model.safetensors') and map that"
        )

    def fill(
        self,
        pairs: Iterable[tuple[str, torch.Tensor]],
        *,
        verify: bool,
        dtypes_match: bool = False,
    ) -> None:
        """Copy each named tensor into its destination (same shape; the dtype is cast)."""
        todo = list(pairs)
        read = self.read(list(dict.fromkeys(name for name, _ in todo)), verify=verify)
        with torch.no_grad():
            for name, dest in todo:
                dest.copy_(read[name])

    def chunks(self, name: str, *, elements: int, verify: bool = True) -> Iterator[torch.Tensor]:
        """The tensor's elements, flattened, in 1-D pieces of at most ``elements`` each."""
        raise NotImplementedError

    def load(
        self, *, device: str | torch.device = "cpu", verify: bool = True, mmap: bool = False
    ) -> Any:
        """The whole saved object: nested state as saved, or a flat name -> tensor dict.

        ``mmap=True``: its tensors are views of the file (see :meth:`mapped`), on the CPU.
        """
        target = mapped_device(device) if mmap else usable_device(device)
        tensors = self.mapped(verify=verify) if mmap else self.read(verify=verify)
        if target.type != "cpu":
            moved: dict[tuple[Any, ...], torch.Tensor] = {}  # ties stay tied
            for name, tensor in tensors.items():
                ident = memory_identity(tensor) or (id(tensor),)
                if ident not in moved:
                    moved[ident] = tensor.to(target)
                tensors[name] = moved[ident]
        tree = self.tree
        if tree is None:
            return tensors
        try:  # unflatten names the node of a reference to a tensor the file lacks
            return unflatten(tree, tensors.__getitem__)
        except HeaderError as exc:
            raise HeaderError(f"{self.label}: {exc}") from None

    def stored_object(self, key: str) -> tuple[bool, Any]:
        """``(True, value)`` when the saved state dict has a non-tensor value at ``key``.

        That is a module's extra state (``get_extra_state``), kept in the nested-state tree.
        """
        node = top_level_objects(self.tree).get(key)
        if node is None:
            return False, None
        return True, unflatten(node, lambda name: self.read([name])[name])

    def torch_versions(self) -> dict[str, Any] | None:
        """torch's per-module version table (a state dict's ``_metadata``) saved with it.

        Modules that migrate old checkpoints (BatchNorm) read their version from it in
        ``_load_from_state_dict``; None when the state was saved without one.
        """
        return tree_versions(self.tree)

    def close(self) -> None:
        """Release file handles (idempotent)."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.kind} {self.label!r}>"


def tensor_chunks(tensor: torch.Tensor, elements: int) -> Iterator[torch.Tensor]:
    """A tensor already in memory as 1-D views of at most ``elements`` elements."""
    flat = tensor.detach().reshape(-1)
    step = max(1, elements)
    for start in range(0, flat.numel(), step):
        yield flat[start : start + step]


def top_level_objects(tree: Skeleton | None) -> dict[str, Skeleton]:
    """The tree nodes of a saved state dict's values that are not lone tensors."""
    root = read_node(tree)
    if root[0] != DICT:
        return {}
    return {
        key: child
        for key, child in children(root)
        if isinstance(key, str) and read_node(child)[0] != TENSOR
    }


def tree_versions(tree: Skeleton | None) -> dict[str, Any] | None:
    """The version tables kept with saved state dicts (see ``fileformat.tree``), by module
    name as the checkpoint's tensors name it: a table saved under ``"model"`` keys
    ``"model.bn"``.

    Only dicts nested in dicts are looked into (where state dicts sit in a checkpoint).
    """
    found: dict[str, Any] = {}
    for path, (_, _, _, _, versions) in walk(tree, into=lambda node: node[0] == DICT):
        if versions is not None:
            at = ".".join(map(str, path))
            for prefix, entry in versions.items():
                found.setdefault(f"{at}.{prefix}" if at and prefix else at or prefix, entry)
    return found or None
