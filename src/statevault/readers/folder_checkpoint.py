"""A folder holding several kinds of state (a Trainer ``checkpoint-N/``, an accelerate
``save_state`` folder) as one :class:`Checkpoint` that reads as ``{key: state}``.

Built by ``readers.folders`` from the parts it opened; tensor names are ``key.name``. May be
imported by ``readers.folders``.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from statevault.engine.progress import Progress
from statevault.errors import CheckpointNotFoundError
from statevault.fileformat.tree import Skeleton, flatten
from statevault.readers.base import Checkpoint, TensorInfo
from statevault.readers.listing import CheckpointKind, FolderEntry, FolderFileKind

NO_WEIGHTS = "model weights (model.safetensors, pytorch_model.bin or their index)"
MODEL_KEY = "model"


def weights_key(kinds: Mapping[str, CheckpointKind | FolderFileKind]) -> str | None:
    """Which state (key -> kind) is the model's weights: ``model``; else the one state whose
    key ends in ``_model`` (``diffusion_pytorch_model``, ``adapter_model``) or that is a
    shard index; else none."""
    if MODEL_KEY in kinds:
        return MODEL_KEY
    found = [
        key
        for key, kind in kinds.items()
        if key.endswith("_model")
        or kind is CheckpointKind.SHARDED
        or (isinstance(kind, FolderFileKind) and kind.is_index)
    ]
    return found[0] if len(found) == 1 else None


def no_checkpoint(directory: Path, listing: Iterable[FolderEntry], what: str) -> Exception:
    present = ", ".join(e.file for e in listing) or "nothing"
    return CheckpointNotFoundError(
        f"{directory}: is a directory with no {what}; it holds: {present}"
    )


class FolderCheckpoint(Checkpoint):
    """Several state files read as ``{key: state}`` (see ``readers.folders``)."""

    directory: Path
    _parts: dict[str, Checkpoint]
    _data: dict[str, Any]
    _contents: tuple[FolderEntry, ...]

    @classmethod
    def from_parts(
        cls,
        directory: Path,
        parts: Mapping[str, Checkpoint],
        data: Mapping[str, Any],
        contents: tuple[FolderEntry, ...],
    ) -> FolderCheckpoint:
        """The folder of opened ``parts`` and JSON ``data``, both by key; ``contents`` lists
        every file. Takes over closing the parts."""
        self = cls._blank()
        self.kind = CheckpointKind.FOLDER
        self.label = str(directory)
        self.directory = directory
        self._parts = dict(parts)
        self._data = dict(data)
        self._contents = contents
        model = self._parts.get(MODEL_KEY)
        self.metadata = dict(model.metadata) if model is not None else {}
        self.aliases = {
            f"{key}.{alias}": f"{key}.{target}"
            for key, part in self._parts.items()
            for alias, target in part.aliases.items()
        }
        self.file_size = sum(part.file_size for part in self._parts.values())
        return self

    @property
    def folder_contents(self) -> tuple[FolderEntry, ...]:
        return self._contents

    @functools.cached_property
    def tensors(self) -> Mapping[str, TensorInfo]:
        # built on first use, as each part's: load() of a folder never needs them
        return {
            f"{key}.{name}": dataclasses.replace(meta, name=f"{key}.{name}")
            for key, part in self._parts.items()
            for name, meta in part.tensors.items()
        }

    @property
    def tree(self) -> Skeleton:
        pairs: list[list[Any]] = []
        for key in sorted([*self._parts, *self._data]):
            if key in self._data:
                pairs.append([key, flatten(self._data[key])[0]])
                continue
            part = self._parts[key]
            subtree = part.tree
            if subtree is None:  # a flat name -> tensor file
                subtree = {"dict": [[n, {"tensor": n}] for n in part.keys()]}  # noqa: SIM118
            pairs.append([key, _prefixed(subtree, f"{key}.")])
        return {"dict": pairs}

    def weights(self) -> Checkpoint:
        key = weights_key({k: p.kind for k, p in self._parts.items()})
        if key is None:
            raise no_checkpoint(self.directory, self.contents, NO_WEIGHTS)
        return self._parts[key]

    def leaves(self) -> list[Checkpoint]:
        return [leaf for part in self._parts.values() for leaf in part.leaves()]

    def _split(self, name: str) -> tuple[str, str]:
        """``key.rest`` as (key, rest), refusing a name no part holds."""
        key, _, rest = name.partition(".")
        if key not in self._parts or not rest:
            raise KeyError(f"{self.label}: no tensor named {name!r}")
        return key, rest

    def signature(self, name: str) -> tuple[tuple[int, ...], torch.dtype]:
        key, rest = self._split(name)
        return self._parts[key].signature(rest)

    def read(
        self,
        names: Sequence[str] | None = None,
        *,
        verify: bool = True,
        progress: Progress | None = None,
    ) -> dict[str, torch.Tensor]:
        return self._per_part(
            names, lambda part, rests: part.read(rests, verify=verify, progress=progress)
        )

    def mapped(
        self, names: Sequence[str] | None = None, *, verify: bool = True
    ) -> dict[str, torch.Tensor]:
        """Each part's tensors as views of its file's mapping (see Checkpoint.mapped)."""
        return self._per_part(names, lambda part, rests: part.mapped(rests, verify=verify))

    def _per_part(
        self,
        names: Sequence[str] | None,
        get: Callable[[Checkpoint, list[str]], dict[str, torch.Tensor]],
    ) -> dict[str, torch.Tensor]:
        """``get(part, its names)`` for every part holding some of ``names``, as one dict."""
        wanted = self.keys() if names is None else list(names)
        by_part: dict[str, list[str]] = {}
        for key, rest in [self._split(name) for name in wanted]:  # refuse before reading
            by_part.setdefault(key, []).append(rest)
        flat: dict[str, torch.Tensor] = {}
        for key, rests in by_part.items():
            got = get(self._parts[key], rests)
            flat.update({f"{key}.{rest}": tensor for rest, tensor in got.items()})
        return {name: flat[name] for name in wanted}

    def fill(
        self,
        pairs: Iterable[tuple[str, torch.Tensor]],
        *,
        verify: bool,
        dtypes_match: bool = False,
    ) -> None:
        by_part: dict[str, list[tuple[str, torch.Tensor]]] = {}
        for name, dest in pairs:
            key, rest = self._split(name)
            by_part.setdefault(key, []).append((rest, dest))
        for key, todo in by_part.items():
            self._parts[key].fill(todo, verify=verify, dtypes_match=dtypes_match)

    def chunks(self, name: str, *, elements: int, verify: bool = True) -> Iterator[torch.Tensor]:
        key, rest = self._split(name)
        return self._parts[key].chunks(rest, elements=elements, verify=verify)

    def load(
        self, *, device: str | torch.device = "cpu", verify: bool = True, mmap: bool = False
    ) -> Any:
        state: dict[str, Any] = {}
        for key in sorted([*self._parts, *self._data]):
            if key in self._data:
                state[key] = copy.deepcopy(self._data[key])  # each call gets its own
            else:
                state[key] = self._parts[key].load(device=device, verify=verify, mmap=mmap)
        return state

    def close(self) -> None:
        for part in self._parts.values():
            part.close()


def _prefixed(node: Skeleton, prefix: str) -> Skeleton:
    """``node`` with every tensor name it refers to prefixed (a new tree; ``node`` is kept)."""
    if not isinstance(node, dict) or not node:
        return node
    kind, body = next(iter(node.items()))
    if kind == "tensor" and isinstance(body, str):
        return {**node, "tensor": prefix + body}
    if kind == "dict" and isinstance(body, list):
        return {**node, "dict": [[k, _prefixed(v, prefix)] for k, v in body]}
    if kind in ("list", "tuple") and isinstance(body, list):
        return {kind: [_prefixed(v, prefix) for v in body]}
    return node
