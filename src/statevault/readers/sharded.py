"""A Hugging Face-style sharded checkpoint (an index's ``weight_map`` plus shards) as a
:class:`Checkpoint`.

``model.safetensors.index.json`` or ``pytorch_model.bin.index.json`` names the shards. The
index is a file we did not write, so it is treated as hostile: each shard name must be a
plain file name inside the index's directory (no ``/``, ``..`` or absolute paths), symlinks
are followed only when they stay in the directory (or, in a Hugging Face cache snapshot, in
its repository's ``blobs/``), only regular files are read, and index and shards must agree
on every name. Every shard is opened once, on open; reads go through those descriptors.
At a URL (``storage`` an object store) the index is one object and its shards the objects
beside it under the same prefix; their names are checked the same way, so none escapes
the prefix, and the shards' headers are fetched in parallel (each a round trip).

May be imported by the other reader modules and the layers above ``readers``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import torch

from statevault.engine.progress import Progress
from statevault.engine.storage import LOCAL_STORAGE, Storage, read_regular
from statevault.errors import CheckpointNotFoundError, HeaderError
from statevault.fileformat.metadata import reject_constant
from statevault.fileformat.shards import BINDING_KEY, index_aliases
from statevault.fileformat.tree import Skeleton
from statevault.readers.base import Checkpoint, TensorInfo
from statevault.readers.listing import CheckpointKind, FolderListing
from statevault.readers.remote_objects import open_shards, read_small
from statevault.readers.shard_binding import (
    OPEN_ATTEMPTS,
    StaleShardError,
    binding_of,
    check_binding,
    committed_paths,
    parse_tree,
)
from statevault.readers.tensor_files import open_tensor_file

MAX_INDEX_BYTES = 100_000_000  # as for a header: a real index is kilobytes


def check_shard_name(name: object, *, index: Path | str) -> str:
    """``name`` if it is a plain file name in the index's directory; refuse anything else."""
    if (
        not isinstance(name, str)
        or name in ("", ".", "..")
        or "\x00" in name
        or PurePosixPath(name).name != name
        or PureWindowsPath(name).name != name
    ):
        raise HeaderError(
            f"{index}: shard name {name!r} is not a plain file name in the same directory; "
            "refusing it (it could point outside the checkpoint). Fix the index's weight_map"
        )
    return name


def allowed_roots(directory: Path) -> tuple[Path, ...]:
    """Where a sharded checkpoint's files may really live once symlinks are followed.

    The directory itself; and, for a Hugging Face cache snapshot
    (``<repo>/snapshots/<revision>/``, whose files are symlinks into ``<repo>/blobs/``),
    that repository's ``blobs`` folder. Nothing else: a shard linked to ``/etc/passwd``
    must not be read.
    """
    real = directory.resolve()
    roots = [real]
    if real.parent.name == "snapshots":
        roots.append(real.parent.parent / "blobs")
    return tuple(roots)


def contained(path: Path, *, directory: Path, what: str) -> Path:
    """``path`` with symlinks resolved, refused unless it stays inside ``directory``."""
    try:
        real = path.resolve()
    except (OSError, RuntimeError) as exc:  # Python 3.11 raises RuntimeError on a link loop
        raise HeaderError(
            f"{path}: this {what} cannot be resolved ({exc}); fix or remove the link"
        ) from exc
    if not any(real.is_relative_to(root) for root in allowed_roots(directory)):
        raise HeaderError(
            f"{path}: this {what} resolves to {real}, outside the checkpoint directory "
            f"{directory}; refusing to follow it. Replace the link with the file it should be"
        )
    return real


def read_index(index: Path | str, storage: Storage = LOCAL_STORAGE) -> Any:
    """The index's JSON document; refuses non-regular, oversized or over-deep files."""
    if isinstance(index, str):  # a URL: one object, read whole
        raw = read_small(storage, index, limit=MAX_INDEX_BYTES)
    else:
        raw = read_regular(
            contained(index, directory=index.parent, what="index"), limit=MAX_INDEX_BYTES
        )
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=reject_constant)
    except UnicodeDecodeError as exc:
        raise HeaderError(f"{index}: not valid UTF-8 (at byte {exc.start})") from None
    except ValueError as exc:
        raise HeaderError(f"{index}: not valid JSON ({exc})") from None
    except RecursionError:
        raise HeaderError(f"{index}: JSON is nested too deeply to be an index") from None


def _weight_map(index: Path | str, document: Any) -> tuple[dict[str, str], dict[str, str]]:
    """The index's ``weight_map`` (name -> shard file) and its metadata as strings."""
    weight_map = document.get("weight_map") if isinstance(document, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise HeaderError(f"{index}: an index file with no 'weight_map' object naming the shards")
    extra = document.get("metadata") or {}
    if not isinstance(extra, dict):
        raise HeaderError(f"{index}: 'metadata' must be an object")
    try:
        metadata = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in extra.items()}
    except RecursionError:
        raise HeaderError(f"{index}: 'metadata' is nested too deeply") from None
    return weight_map, metadata


class ShardedCheckpoint(Checkpoint):
    """Shards (safetensors or torch files) tied together by an index's ``weight_map``."""

    index: Path | str  # a URL stays a string
    _storage: Storage
    _committed: dict[str, Path]  # final name -> temporary, while a commit is unfinished
    _tree: Skeleton | None
    _shards: dict[str, Checkpoint]
    _owner: dict[str, Checkpoint]
    _tensors: dict[str, TensorInfo]

    @classmethod
    def from_index(
        cls,
        index: Path | str,
        *,
        label: str | None = None,
        listing: FolderListing | None = None,
        storage: Storage = LOCAL_STORAGE,
    ) -> ShardedCheckpoint:
        """Open ``index`` and its shards; ``label`` names it in messages (its directory,
        when the directory was what the caller gave). A URL ``index`` is read from
        ``storage``: an object store, where a sharded save writes the index last.

        A statevault index binds its shards (``shard_binding``); a reader that raced a
        sharded save's commit and met shards of both sets opens again, and then sees the
        new set whole.
        """
        for attempt in range(OPEN_ATTEMPTS):
            try:
                return cls._open_once(index, label=label, listing=listing, storage=storage)
            except StaleShardError:
                if attempt == OPEN_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    @classmethod
    def _open_once(
        cls,
        index: Path | str,
        *,
        label: str | None,
        listing: FolderListing | None,
        storage: Storage,
    ) -> ShardedCheckpoint:
        self = cls._blank()
        self.kind = CheckpointKind.SHARDED
        self.label = label or str(index)
        self.index = index
        self._storage = storage
        self._listing = listing
        # an object store has no commit journal: its sharded saves write the index last
        self._committed = committed_paths(index) if isinstance(index, Path) else {}
        where = index if isinstance(index, str) else self._committed.get(index.name, index)
        weight_map, metadata = _weight_map(index, read_index(where, storage))
        binding = binding_of(index, metadata)
        self._tree = parse_tree(index, binding)
        self.metadata = {k: v for k, v in metadata.items() if k != BINDING_KEY}
        self._shards, self._owner = {}, {}
        try:
            self._open_shards(weight_map)
            check_binding(index, binding, self._shards)
            self._check_map(weight_map)
        except BaseException:
            self.close()
            raise
        self.file_size = sum(s.file_size for s in self._shards.values())
        self.aliases = {
            name: shard.aliases[name]
            for name, shard in self._owner.items()
            if name in shard.aliases
        }
        self.aliases.update(index_aliases(metadata, weight_map))  # HF's "removed -> kept"
        self._tensors = {
            name: self._owner[name].tensors[name]
            for name in sorted(self._owner, key=_natural)
            if name not in self.aliases
        }
        return self

    def _open_shards(self, weight_map: Mapping[str, object]) -> None:
        names = sorted({check_shard_name(v, index=self.index) for v in weight_map.values()})
        if isinstance(self.index, str):
            open_shards(self._storage, self.index, names, into=self._shards)
            return
        directory = self.index.parent
        for shard_name in names:
            shard_path = self._committed.get(shard_name, directory / shard_name)
            contained(shard_path, directory=directory, what="shard")
            if not os.path.lexists(shard_path):  # a pipe is refused when opened
                raise CheckpointNotFoundError(
                    f"{self.index}: names shard {shard_name}, which is not in {directory}"
                )
            self._shards[shard_name] = open_tensor_file(shard_path)

    def _check_map(self, weight_map: Mapping[str, str]) -> None:
        problems = []
        for name, shard_name in weight_map.items():
            shard = self._shards[shard_name]
            if name in shard.tensors or name in shard.aliases:  # torch shards may hold ties
                self._owner[name] = shard
            else:
                problems.append(f"{name!r} is mapped to {shard_name} but is not in it")
        torch_kinds = (CheckpointKind.TORCH, CheckpointKind.TORCH_LEGACY)
        for shard_name, shard in self._shards.items():
            if shard.aliases and shard.kind not in torch_kinds:
                problems.append(f"{shard_name} has tied aliases, which sharded indexes lack")
            problems += [
                f"{name!r} is in {shard_name} but the index maps it elsewhere"
                for name in shard.tensors
                if weight_map.get(name) != shard_name
            ]
        if problems:
            shown = "; ".join(problems[:5]) + (
                f"; ... and {len(problems) - 5} more" * (len(problems) > 5)
            )
            raise HeaderError(f"{self.index}: index and shards disagree: {shown}")

    @property
    def tensors(self) -> Mapping[str, TensorInfo]:
        return self._tensors

    @property
    def tree(self) -> Skeleton | None:
        """The skeleton a statevault sharded save recorded in the index (else None)."""
        return self._tree

    def signature(self, name: str) -> tuple[tuple[int, ...], torch.dtype]:
        stored = self.aliases.get(name, name)
        return self._owner[stored].signature(stored)

    def owner(self, name: str) -> Checkpoint:
        """The shard holding stored tensor ``name``."""
        return self._owner[name]

    def leaves(self) -> list[Checkpoint]:
        return [leaf for shard in self._shards.values() for leaf in shard.leaves()]

    def fill(
        self,
        pairs: Iterable[tuple[str, torch.Tensor]],
        *,
        verify: bool,
        dtypes_match: bool = False,
    ) -> None:
        by_shard: dict[int, list[tuple[str, torch.Tensor]]] = {}
        for name, dest in pairs:
            stored = self.aliases.get(name, name)
            by_shard.setdefault(id(self._owner[stored]), []).append((stored, dest))
        for shard in self._shards.values():
            mine = by_shard.get(id(shard))
            if mine:
                shard.fill(mine, verify=verify, dtypes_match=dtypes_match)

    def chunks(self, name: str, *, elements: int, verify: bool = True) -> Iterator[torch.Tensor]:
        stored = self.aliases.get(name, name)
        return self._owner[stored].chunks(stored, elements=elements, verify=verify)

    def read(
        self,
        names: Sequence[str] | None = None,
        *,
        verify: bool = True,
        progress: Progress | None = None,
    ) -> dict[str, torch.Tensor]:
        return self._per_shard(
            names, lambda shard, mine: shard.read(mine, verify=verify, progress=progress)
        )

    def mapped(
        self, names: Sequence[str] | None = None, *, verify: bool = True
    ) -> dict[str, torch.Tensor]:
        """Each shard's tensors as views of that shard's mapping (see Checkpoint.mapped)."""
        return self._per_shard(names, lambda shard, mine: shard.mapped(mine, verify=verify))

    def _per_shard(
        self,
        names: Sequence[str] | None,
        get: Callable[[Checkpoint, list[str]], dict[str, torch.Tensor]],
    ) -> dict[str, torch.Tensor]:
        """``get(shard, its names)`` for every shard holding some of ``names``, as one dict."""
        wanted = self.keys() if names is None else list(names)
        stored = [self.aliases.get(n, n) for n in wanted]  # an index's aliases share a tensor
        unknown = [n for n, s in zip(wanted, stored, strict=True) if s not in self._owner]
        if unknown:
            raise KeyError(f"{self.label}: no tensor named {unknown[0]!r}")
        by_shard: dict[int, list[str]] = {}
        for name in dict.fromkeys(stored):  # one pass: not every name once per shard
            by_shard.setdefault(id(self._owner[name]), []).append(name)
        flat: dict[str, torch.Tensor] = {}
        for shard in self._shards.values():
            mine = by_shard.get(id(shard))
            if mine:
                flat.update(get(shard, mine))
        return {name: flat[s] for name, s in zip(wanted, stored, strict=True)}

    def close(self) -> None:
        for shard in self._shards.values():
            shard.close()


def _natural(name: str) -> tuple[tuple[int, int, str], ...]:
    """Sort key putting ``layers.2`` before ``layers.10``.

    Digit runs compare by length, then text: no int() of a name from the file (other
    Unicode digits and 5,000-digit runs make int() raise).
    """
    return tuple(
        (0, len(p), p) if p.isascii() and p.isdigit() else (1, 0, p) for p in name.split(".")
    )
