"""inspect(): what is inside a checkpoint, from its header alone, as one summary value.

Tensors are grouped into a module tree by the dots in their names (``encoder.layers.0.w``),
with parameter counts and bytes summed per subtree. The non-tensor part of nested state
(epoch, optimizer hyper-parameters) comes from the statevault skeleton, so it too costs no
tensor I/O. May be imported by: the public package and ``statevault.tools`` (diffing uses
``state_leaves``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from statevault.engine.fsspec_storage import StorageOptions
from statevault.engine.temps import describe_temporaries
from statevault.fileformat.skeleton import DICT, FLOAT, TENSOR, VALUE, children, read_node, walk
from statevault.fileformat.tree import Skeleton
from statevault.readers.base import Checkpoint, TensorInfo
from statevault.readers.listing import FolderEntry
from statevault.tools.arguments import checkpoint_source


@dataclass(frozen=True)
class ModuleNode:
    """One node of the module tree: a name prefix and the totals of everything under it."""

    name: str  # last segment ("" for the root)
    path: str  # the full dotted prefix
    numel: int
    nbytes: int
    count: int  # stored tensors below (aliases excluded, they share bytes)
    children: tuple[ModuleNode, ...] = ()
    tensor: TensorInfo | None = None  # set on leaves that are stored tensors
    alias_of: str | None = None  # set on leaves that are tied to another tensor


@dataclass(frozen=True)
class CheckpointSummary:
    """Everything ``statevault inspect`` shows; ``to_dict()`` is its ``--json`` form."""

    path: str
    kind: str
    format_version: int | None
    file_size: int
    has_checksums: bool
    tensors: tuple[TensorInfo, ...]
    aliases: Mapping[str, str]
    metadata: Mapping[str, str]
    state: Any  # non-tensor nested state as JSON, None when there is none
    root: ModuleNode = field(repr=False)
    files: tuple[FolderEntry, ...] = ()  # a folder's files and what each became
    notes: tuple[str, ...] = ()  # e.g. temporary files of killed saves in a directory

    @property
    def numel(self) -> int:
        return self.root.numel

    @property
    def nbytes(self) -> int:
        return self.root.nbytes

    def to_dict(self) -> dict[str, Any]:
        sharded = self.kind == "sharded"
        modules: dict[str, Any] = {}

        def walk(node: ModuleNode) -> None:
            if node.children and node.path:  # the root's totals are the top-level fields
                modules[node.path] = {
                    "numel": node.numel,
                    "nbytes": node.nbytes,
                    "tensors": node.count,
                }
            for child in node.children:
                walk(child)

        walk(self.root)
        return {
            "path": self.path,
            "kind": self.kind,
            "format_version": self.format_version,
            "file_size": self.file_size,
            "has_checksums": self.has_checksums,
            "tensor_count": len(self.tensors),
            "numel": self.numel,
            "nbytes": self.nbytes,
            "metadata": dict(self.metadata),
            "state": self.state,
            "aliases": dict(self.aliases),
            "modules": modules,
            **({"files": [dataclasses.asdict(e) for e in self.files]} if self.files else {}),
            "notes": list(self.notes),
            "tensors": [
                {
                    "name": t.name,
                    "dtype": t.dtype_name,
                    "shape": list(t.shape),
                    "numel": t.numel,
                    "nbytes": t.nbytes,
                    "stored_as": t.code,
                    "checksum": t.checksum,
                    **({"file": os.path.basename(t.file)} if sharded else {}),
                }
                for t in self.tensors
            ],
        }


# -- the module tree -----------------------------------------------------------------------


MAX_MODULE_DEPTH = 64


class _Builder:
    def __init__(self) -> None:
        self.children: dict[str, _Builder] = {}
        self.tensor: TensorInfo | None = None
        self.alias_of: str | None = None

    def at(self, name: str) -> _Builder:
        node = self
        # bounded: a name of 5,000 dotted parts would otherwise recurse past Python's limit
        # in freeze(); what lies deeper stays one leaf named by the rest of the name
        for part in name.split(".", MAX_MODULE_DEPTH - 1):
            node = node.children.setdefault(part, _Builder())
        return node

    def freeze(self, name: str, path: str) -> ModuleNode:
        children = tuple(
            child.freeze(part, f"{path}.{part}" if path else part)
            for part, child in self.children.items()
        )
        own_numel = self.tensor.numel if self.tensor else 0
        own_bytes = self.tensor.nbytes if self.tensor else 0
        return ModuleNode(
            name=name,
            path=path,
            numel=own_numel + sum(c.numel for c in children),
            nbytes=own_bytes + sum(c.nbytes for c in children),
            count=(self.tensor is not None) + sum(c.count for c in children),
            children=children,
            tensor=self.tensor,
            alias_of=self.alias_of,
        )


def module_tree(tensors: Mapping[str, TensorInfo], aliases: Mapping[str, str]) -> ModuleNode:
    """Group tensors by the dotted prefixes of their names; aliases are zero-cost leaves."""
    root = _Builder()
    for name, meta in tensors.items():
        root.at(name).tensor = meta
    for alias, target in aliases.items():
        root.at(alias).alias_of = target
    return root.freeze("", "")


# -- non-tensor state ----------------------------------------------------------------------

_ABSENT = object()


def _placeholder(node: Skeleton) -> str:
    """What stands in a list for an item with no plain values: a tensor, or a container of
    only tensors (``[None, [t]]``; indexing it as a tensor node was a KeyError)."""
    kind, name, _, _, _ = read_node(node)
    return f"<tensor {name}>" if kind == TENSOR else "<tensors>"


def _plain(raw: Skeleton) -> Any:
    kind, value, body, _, _ = node = read_node(raw)
    if kind == VALUE:
        return value
    if kind == FLOAT:
        return str(value)  # "nan" / "inf": JSON has no such numbers
    if body is None:
        return _ABSENT  # tensors
    if kind != DICT:
        items = [_plain(item) for item in body]
        if items and all(item is _ABSENT for item in items):
            return _ABSENT
        # keep positions meaningful when tensors and plain values are mixed
        return [_placeholder(body[i]) if item is _ABSENT else item for i, item in enumerate(items)]
    pairs = {str(k): _plain(v) for k, v in children(node)}
    kept = {k: v for k, v in pairs.items() if v is not _ABSENT}
    return kept or _ABSENT


def plain_state(skeleton: Skeleton | None) -> Any:
    """The non-tensor part of nested state as JSON (None when it is all tensors)."""
    value = _plain(skeleton) if skeleton is not None else _ABSENT
    return None if value is _ABSENT else value


def state_leaves(skeleton: Skeleton | None) -> dict[str, Any]:
    """Every non-tensor leaf by dotted path (tensor names use the same paths)."""
    if skeleton is None:
        return {}
    return {
        ".".join(map(str, path)) or "<root>": value
        for path, (kind, value, _, _, _) in walk(skeleton)
        if kind in (VALUE, FLOAT)
    }


def _summarize(source: Checkpoint) -> CheckpointSummary:
    """The summary of an already opened input (no tensor data is read)."""
    return CheckpointSummary(
        path=source.label,
        kind=source.kind,
        format_version=source.format_version,
        file_size=source.file_size,
        has_checksums=source.has_checksums,
        tensors=tuple(source.tensors.values()),
        aliases=dict(source.aliases),
        metadata=dict(source.metadata),
        state=plain_state(source.tree),
        root=module_tree(source.tensors, source.aliases),
        files=source.folder_contents or (),
    )


def inspect(
    source: str | os.PathLike[str], *, storage_options: StorageOptions | None = None
) -> CheckpointSummary:
    """Summarise a checkpoint without reading its tensors.

    Works on statevault and plain safetensors files (header only), Hugging Face sharded
    directories (each shard's header) and ``.pt``/``.pth`` files (through torch's
    weights-only loader, memory-mapped). At a URL (``storage_options`` passed to fsspec)
    only each file's header is fetched, with one ranged request for most files.

    Example::

        summary = statevault.inspect("ckpt.safetensors")
        print(summary.numel, summary.state["epoch"])
    """
    where = checkpoint_source(source)
    with Checkpoint(where, storage_options=storage_options) as opened:
        summary = _summarize(opened)
    if isinstance(where, Path) and where.is_dir():  # what killed saves left beside the shards
        summary = replace(summary, notes=tuple(describe_temporaries(where)))
    return summary
