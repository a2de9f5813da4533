"""Checkpoint folders: sharded directories and Hugging Face / accelerate layouts.

Rules (docs/opening.md has the user's version):

* Each file gets a **key**: its name up to the first dot (``optimizer.pt`` -> ``optimizer``,
  ``model.safetensors.index.json`` -> ``model``, ``random_states_0.pkl`` ->
  ``random_states_0``); Hugging Face's ``pytorch_model`` weights are keyed ``model`` too.
* Shards named by an index belong to the index. When two files give one key, the preferred
  format wins: safetensors index, safetensors file, ``.bin`` index, torch file, JSON. The
  other is listed as superseded, never read.
* The model's weights are the ``model`` key; else the one key ending in ``_model``
  (``diffusion_pytorch_model``, ``adapter_model``) or read from a shard index.
* A folder whose only loadable state is the model's weights (``save_pretrained``, a
  sharded directory, a ``trainer.save_model()`` folder whose ``training_args.bin`` the
  weights-only loader refuses) **is** the model: it reads as that weights file or index,
  and its JSON files (config.json) are listed but not read.
* Any other folder (a Trainer ``checkpoint-N/``, accelerate ``save_state``) reads as a whole:
  ``load`` returns ``{key: state}``, JSON files included as plain data, tensor names are
  ``key.name``. A torch file the weights-only loader refuses (``training_args.bin``, a
  pickled ``TrainingArguments``) is listed as not loadable without pickle and left out.
* ``weights=True`` (what ``load_into`` and ``materialize`` ask for) opens only the model.
  A folder with several kinds of state and no ``model`` has no weights to give.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from statevault.engine.progress import Progress
from statevault.engine.storage import read_regular
from statevault.errors import CheckpointNotFoundError, HeaderError, StateVaultError
from statevault.fileformat.tree import Skeleton, flatten
from statevault.readers.base import FolderEntry, Reader, TensorMeta
from statevault.readers.files import (
    MAX_INDEX_BYTES,
    ShardedInput,
    WeightsOnlyRefusal,
    check_shard_name,
    open_file,
)
from statevault.readers.sniff import TORCH_SUFFIXES

MODEL_KEY = "model"
_WEIGHT_STEMS = {"pytorch_model": MODEL_KEY}  # Hugging Face's .bin weights name
# preference when two files give one key (lower wins)
_RANK = {"safetensors index": 0, "safetensors": 1, "index": 2, "torch": 3, "json": 4}
REFUSED = "not loadable without pickle"


def key_for(name: str) -> str:
    """The key of a file in a folder: its name up to the first dot (see module docstring)."""
    stem = name.split(".", 1)[0]
    return _WEIGHT_STEMS.get(stem, stem)


@dataclass
class _Candidate:
    path: Path
    key: str
    kind: str  # a key of _RANK


def _kind_of(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(".safetensors.index.json"):
        return "safetensors index"
    if name.endswith(".index.json"):
        return "index"
    if path.suffix.lower() == ".safetensors":
        return "safetensors"
    if path.suffix.lower() in TORCH_SUFFIXES:
        return "torch"
    if path.suffix.lower() == ".json":
        return "json"
    return None


def _shard_names(index: Path) -> set[str]:
    """The shard file names an index names (empty when it cannot be read: opening says why)."""
    try:
        document = json.loads(read_regular(index, limit=MAX_INDEX_BYTES).decode("utf-8"))
    except (OSError, StateVaultError, UnicodeDecodeError, ValueError, RecursionError):
        return set()
    weight_map = document.get("weight_map") if isinstance(document, dict) else None
    if not isinstance(weight_map, dict):
        return set()
    return {check_shard_name(v, index=index) for v in weight_map.values()}


def _scan(directory: Path) -> tuple[dict[str, _Candidate], list[FolderEntry]]:
    """The file chosen for each key, and the listing of everything not chosen."""
    try:
        children = sorted(directory.iterdir())
    except OSError as exc:
        raise CheckpointNotFoundError(f"{directory}: cannot list this directory ({exc})") from exc
    files = [p for p in children if not p.name.startswith(".")]
    shards = {
        name: p
        for p in files
        if not p.is_dir() and (_kind_of(p) or "").endswith("index")
        for name in _shard_names(p)
    }
    listing: list[FolderEntry] = []
    chosen: dict[str, _Candidate] = {}
    for path in files:
        # by name for anything but a folder: a named pipe must be refused when opened, not
        # skipped as if it were not there
        kind = _kind_of(path) if not path.is_dir() else None
        if path.name in shards:
            key = key_for(shards[path.name].name)
            listing.append(FolderEntry(path.name, key, "shard", "shard", shards[path.name].name))
            continue
        if kind is None:
            what = "a directory" if path.is_dir() else "not a checkpoint file"
            listing.append(FolderEntry(path.name, None, "other", "ignored", what))
            continue
        candidate = _Candidate(path, key_for(path.name), kind)
        held = chosen.get(candidate.key)
        if held is None:
            chosen[candidate.key] = candidate
            continue
        winner, loser = (candidate, held) if _RANK[kind] < _RANK[held.kind] else (held, candidate)
        chosen[candidate.key] = winner
        note = f"{winner.path.name} holds the same key ({winner.key!r}) in a preferred format"
        listing.append(FolderEntry(loser.path.name, None, loser.kind, "superseded", note))
    return chosen, listing


def _no_checkpoint(directory: Path, listing: list[FolderEntry], what: str) -> Exception:
    present = ", ".join(e.file for e in listing) or "nothing"
    return CheckpointNotFoundError(
        f"{directory}: is a directory with no {what}; it holds: {present}"
    )


NO_CHECKPOINT = (
    "checkpoint (no readable *.safetensors, *.pt/.pth/.bin/.ckpt/.pkl or *.index.json file)"
)
NO_WEIGHTS = "model weights (model.safetensors, pytorch_model.bin or their index)"


def weights_key(kinds: Mapping[str, str]) -> str | None:
    """Which state (key -> kind) is the model's weights: ``model``; else the one state whose
    key ends in ``_model`` (``diffusion_pytorch_model``, ``adapter_model``) or that is a
    shard index; else none."""
    if MODEL_KEY in kinds:
        return MODEL_KEY
    found = [
        key
        for key, kind in kinds.items()
        if key.endswith("_model") or kind in ("safetensors index", "index", "sharded")
    ]
    return found[0] if len(found) == 1 else None


def _open_candidate(candidate: _Candidate, *, tree: bool, label: str | None = None) -> Reader:
    if candidate.kind.endswith("index"):
        return ShardedInput(candidate.path, tree=tree, label=label)
    return open_file(candidate.path, tree=tree)


def open_folder(directory: Path, *, tree: bool = True, weights: bool = False) -> Reader:
    """Open a checkpoint folder by the rules in the module docstring."""
    chosen, skipped = _scan(directory)
    if not chosen:
        raise _no_checkpoint(directory, skipped, NO_CHECKPOINT)
    state = {k: c for k, c in chosen.items() if c.kind != "json"}
    key = weights_key({k: c.kind for k, c in state.items()})
    if weights or (key is not None and len(state) == 1):
        if key is None:
            listed = [FolderEntry(c.path.name, k, c.kind, "") for k, c in chosen.items()]
            raise _no_checkpoint(directory, [*listed, *skipped], NO_WEIGHTS)
        model = state[key]
        label = str(directory) if model.kind.endswith("index") else None
        reader = _open_candidate(model, tree=tree, label=label)
        unread = [
            FolderEntry(c.path.name, None, c.kind, "ignored", "only the model weights were read")
            for k, c in chosen.items()
            if k != key
        ]
        reader.folder_contents = (
            FolderEntry(model.path.name, key, reader.kind, "loaded"),
            *unread,
            *skipped,
        )
        return reader
    folder = FolderInput(directory, chosen, skipped, tree=tree)
    if len(folder.parts()) == 1 and folder.has_weights():
        # the rest was refused by the weights-only loader (a trainer.save_model() output
        # folder: weights, config.json, training_args.bin): the folder is its model
        return folder.as_model()
    return folder


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


class FolderInput(Reader):
    """A folder holding several kinds of state, read as ``{key: state}`` (module docstring)."""

    def __init__(
        self,
        directory: Path,
        chosen: Mapping[str, _Candidate],
        skipped: list[FolderEntry],
        *,
        tree: bool = True,
    ) -> None:
        self.kind = "folder"
        self.label = str(directory)
        self.directory = directory
        self._parts: dict[str, Reader] = {}
        self._data: dict[str, Any] = {}
        listing: list[FolderEntry] = []
        try:
            for key, candidate in sorted(chosen.items()):
                name = candidate.path.name
                if candidate.kind == "json":
                    self._data[key] = _read_json(candidate.path)
                    listing.append(FolderEntry(name, key, "json", "loaded"))
                    continue
                try:
                    part = _open_candidate(candidate, tree=tree)
                except WeightsOnlyRefusal as exc:  # e.g. a pickled TrainingArguments
                    listing.append(FolderEntry(name, None, candidate.kind, REFUSED, exc.reason))
                    continue
                self._parts[key] = part
                listing.append(FolderEntry(name, key, part.kind, "loaded"))
        except BaseException:
            self.close()
            raise
        if not self._parts:
            self.close()
            raise _no_checkpoint(directory, [*listing, *skipped], NO_CHECKPOINT)
        self.folder_contents = (*listing, *skipped)
        model = self._parts.get(MODEL_KEY)
        self.metadata = dict(model.metadata) if model is not None else {}
        self.aliases = {
            f"{key}.{alias}": f"{key}.{target}"
            for key, part in self._parts.items()
            for alias, target in part.aliases.items()
        }
        self.file_size = sum(part.file_size for part in self._parts.values())
        self.format_version = None

    @functools.cached_property
    def tensors(self) -> Mapping[str, TensorMeta]:
        # built on first use, as each part's: load() of a folder never needs them
        return {
            f"{key}.{name}": dataclasses.replace(meta, name=f"{key}.{name}")
            for key, part in self._parts.items()
            for name, meta in part.tensors.items()
        }

    @property
    def tree(self) -> Skeleton:  # type: ignore[override]
        pairs: list[list[Any]] = []
        for key in sorted([*self._parts, *self._data]):
            if key in self._data:
                pairs.append([key, flatten(self._data[key])[0]])
                continue
            part = self._parts[key]
            subtree = part.tree
            if subtree is None:  # a flat name -> tensor file
                subtree = {"dict": [[n, {"tensor": n}] for n in part.names()]}
            pairs.append([key, _prefixed(subtree, f"{key}.")])
        return {"dict": pairs}

    def parts(self) -> dict[str, Reader]:
        """The opened state files by key (JSON data excluded)."""
        return dict(self._parts)

    def as_model(self) -> Reader:
        """The model part alone, listing this folder's files (JSON data is then not read)."""
        model = self.weights()
        if isinstance(model, ShardedInput):
            model.label = self.label
        model.folder_contents = tuple(
            dataclasses.replace(
                e, key=None, status="ignored", note="only the model weights were read"
            )
            if e.kind == "json" and e.status == "loaded"
            else e
            for e in self.contents
        )
        return model

    def has_weights(self) -> bool:
        return weights_key({k: p.kind for k, p in self._parts.items()}) is not None

    def weights(self) -> Reader:
        key = weights_key({k: p.kind for k, p in self._parts.items()})
        if key is None:
            raise _no_checkpoint(self.directory, list(self.contents), NO_WEIGHTS)
        return self._parts[key]

    def leaves(self) -> list[Reader]:
        return [leaf for part in self._parts.values() for leaf in part.leaves()]

    def _split(self, name: str) -> tuple[Reader, str]:
        key, _, rest = name.partition(".")
        part = self._parts.get(key)
        if part is None or not rest:
            raise KeyError(f"{self.label}: no tensor named {name!r}")
        return part, rest

    def signature(self, name: str) -> tuple[tuple[int, ...], torch.dtype]:
        part, rest = self._split(name)
        return part.signature(rest)

    def read(
        self,
        names: Sequence[str] | None = None,
        *,
        verify: bool = True,
        progress: Progress | None = None,
    ) -> dict[str, torch.Tensor]:
        wanted = self.keys() if names is None else list(names)
        by_part: dict[str, list[str]] = {}
        for name in wanted:
            self._split(name)  # unknown names fail before anything is read
            key, _, rest = name.partition(".")
            by_part.setdefault(key, []).append(rest)
        flat: dict[str, torch.Tensor] = {}
        for key, rests in by_part.items():
            read = self._parts[key].read(rests, verify=verify, progress=progress)
            flat.update({f"{key}.{rest}": tensor for rest, tensor in read.items()})
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
            self._split(name)
            key, _, rest = name.partition(".")
            by_part.setdefault(key, []).append((rest, dest))
        for key, todo in by_part.items():
            self._parts[key].fill(todo, verify=verify, dtypes_match=dtypes_match)

    def chunks(self, name: str, *, elements: int, verify: bool = True) -> Iterator[torch.Tensor]:
        part, rest = self._split(name)
        return part.chunks(rest, elements=elements, verify=verify)

    def load(self, *, device: str | torch.device = "cpu", verify: bool = True) -> Any:
        state: dict[str, Any] = {}
        for key in sorted([*self._parts, *self._data]):
            if key in self._data:
                state[key] = copy.deepcopy(self._data[key])  # each call gets its own
            else:
                state[key] = self._parts[key].load(device=device, verify=verify)
        return state

    def close(self) -> None:
        for part in self._parts.values():
            part.close()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(read_regular(path, limit=MAX_INDEX_BYTES).decode("utf-8"))
    except OSError as exc:
        raise CheckpointNotFoundError(f"{path}: cannot read this file ({exc})") from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise HeaderError(f"{path}: a JSON file that does not parse ({exc})") from None
    except RecursionError:
        raise HeaderError(f"{path}: a JSON file nested too deeply to read") from None
