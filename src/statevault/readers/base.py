"""The one reader type every checkpoint opens as, whatever its format.

:func:`statevault.open_checkpoint` returns a :class:`Reader` for a statevault or safetensors
file, a sharded directory or its index file, a torch ``.pt``/``.bin`` file, a Hugging Face
folder (``save_pretrained``, a Trainer ``checkpoint-N/``, accelerate ``save_state``) or an
in-memory state dict. ``load``, ``load_into``, ``check``, ``materialize`` and the CLI tools
all read through it, so each format is handled in one place. A reader answers from header
facts (names, shapes, dtypes) without reading tensor data; data is read when asked for.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from statevault.engine.progress import Progress
from statevault.engine.ties import memory_identity
from statevault.errors import HeaderError
from statevault.fileformat.dtypes import dtype_name
from statevault.fileformat.skeleton import DICT, TENSOR, children, read_node, walk
from statevault.fileformat.tree import Skeleton, unflatten
from statevault.readers.safetensors_file import usable_device


@dataclass(frozen=True)
class TensorMeta:
    """Header-level facts about one stored tensor, whatever file it lives in."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    nbytes: int
    code: str | None  # safetensors dtype code; None when statevault cannot store the dtype
    checksum: str | None  # recorded xxh3-64 digest, if the file has one
    file: str  # the file holding the bytes (differs per shard)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def dtype_name(self) -> str:
        return dtype_name(self.dtype)


@dataclass(frozen=True)
class FolderEntry:
    """One file of an opened checkpoint, and what became of it.

    ``key`` is where its state sits in what ``load`` returns (None when it is not read);
    ``status`` is ``"loaded"``, ``"shard"`` (read as part of the index in ``note``),
    ``"not loadable without pickle"`` (the weights-only loader refused it; ``note`` says
    why), ``"superseded"`` (another file holds the same key in a preferred format) or
    ``"ignored"`` (not a checkpoint file, or not needed: ``note`` says which).
    """

    file: str
    key: str | None
    kind: str  # "statevault", "safetensors", "torch", "torch-legacy", "index", "json", ...
    status: str
    note: str = ""


class Reader(abc.ABC):
    """An opened checkpoint: header facts now, tensor data on demand. Close when done.

    Subclasses set ``kind``, ``label``, ``metadata``, ``aliases``, ``tree`` and ``file_size``
    and provide ``tensors``, ``read``, ``chunks`` and ``close``; everything else has a
    generic form here that a format may replace with a faster one.
    """

    kind: str  # "statevault", "safetensors", "torch", "torch-legacy", "sharded", "folder", ...
    label: str
    format_version: int | None = None
    metadata: Mapping[str, str]
    aliases: Mapping[str, str]
    tree: Skeleton | None
    file_size: int
    folder_contents: tuple[FolderEntry, ...] | None = None  # set when opened from a folder

    @property
    @abc.abstractmethod
    def tensors(self) -> Mapping[str, TensorMeta]:
        """Stored tensors (aliases excluded): name -> :class:`TensorMeta`."""

    @property
    def contents(self) -> tuple[FolderEntry, ...]:
        """The files this checkpoint was read from, and what each became (see FolderEntry)."""
        if self.folder_contents is not None:
            return self.folder_contents
        return (FolderEntry(self.label, None, self.kind, "loaded"),)

    @property
    def has_checksums(self) -> bool:
        return any(meta.checksum is not None for meta in self.tensors.values())

    def keys(self) -> list[str]:
        """Every tensor name: stored ones, then aliases."""
        return [*self.tensors, *self.aliases]

    def names(self) -> list[str]:
        return self.keys()

    def resolve(self, name: str) -> TensorMeta:
        """Header facts for ``name``, following an alias to the stored tensor."""
        return self.tensors[self.aliases.get(name, name)]

    def signature(self, name: str) -> tuple[tuple[int, ...], torch.dtype]:
        """(shape, dtype) of ``name`` without reading data."""
        meta = self.resolve(name)
        return meta.shape, meta.dtype

    def weights(self) -> Reader:
        """The model weights in this checkpoint (itself, except for a training folder)."""
        return self

    def leaves(self) -> list[Reader]:
        """The single-file readers this checkpoint is made of (shards, a folder's files)."""
        return [self]

    @abc.abstractmethod
    def read(
        self,
        names: Sequence[str] | None = None,
        *,
        verify: bool = True,
        progress: Progress | None = None,
    ) -> dict[str, torch.Tensor]:
        """The named keys (all by default) as a flat name -> tensor dict, tied ones shared."""

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

    @abc.abstractmethod
    def chunks(self, name: str, *, elements: int, verify: bool = True) -> Iterator[torch.Tensor]:
        """The tensor's elements, flattened, in 1-D pieces of at most ``elements`` each."""

    def load(self, *, device: str | torch.device = "cpu", verify: bool = True) -> Any:
        """The whole saved object: nested state as saved, or a flat name -> tensor dict."""
        target = usable_device(device)
        tensors = self.read(verify=verify)
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

    @abc.abstractmethod
    def close(self) -> None:
        """Release file handles (idempotent)."""

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
    """The version tables kept with saved state dicts (see ``tree``), by module name as the
    checkpoint's tensors name it: a table saved under ``"model"`` keys ``"model.bn"``.

    Only dicts nested in dicts are looked into (where state dicts sit in a checkpoint).
    """
    found: dict[str, Any] = {}
    for path, (_, _, _, _, versions) in walk(tree, into=lambda node: node[0] == DICT):
        if versions is not None:
            at = ".".join(map(str, path))
            for prefix, entry in versions.items():
                found.setdefault(f"{at}.{prefix}" if at and prefix else at or prefix, entry)
    return found or None
