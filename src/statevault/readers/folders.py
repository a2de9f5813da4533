"""Opening a checkpoint folder: sharded directories and Hugging Face / accelerate layouts.

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

The decision is made before the model's file is opened, so the checkpoint returned is
built complete with its listing (nothing edits it afterwards). May be imported by
``readers.dispatch``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from statevault.engine.commit import committed_view
from statevault.engine.storage import read_regular
from statevault.errors import CheckpointNotFoundError, HeaderError, StateVaultError
from statevault.readers.base import Checkpoint
from statevault.readers.folder_checkpoint import (
    NO_WEIGHTS,
    FolderCheckpoint,
    no_checkpoint,
    weights_key,
)
from statevault.readers.listing import EntryStatus, FolderEntry, FolderFileKind, FolderListing
from statevault.readers.sharded import MAX_INDEX_BYTES, ShardedCheckpoint, check_shard_name
from statevault.readers.sniff import TORCH_SUFFIXES
from statevault.readers.tensor_files import open_tensor_file
from statevault.readers.weights_only import WeightsOnlyRefusal

_WEIGHT_STEMS = {"pytorch_model": "model"}  # Hugging Face's .bin weights name
# preference when two files give one key (lower wins)
_RANK = {
    FolderFileKind.SAFETENSORS_INDEX: 0,
    FolderFileKind.SAFETENSORS: 1,
    FolderFileKind.INDEX: 2,
    FolderFileKind.TORCH: 3,
    FolderFileKind.JSON: 4,
}
NO_CHECKPOINT = (
    "checkpoint (no readable *.safetensors, *.pt/.pth/.bin/.ckpt/.pkl or *.index.json file)"
)
WEIGHTS_ONLY = "only the model weights were read"


def key_for(name: str) -> str:
    """The key of a file in a folder: its name up to the first dot (see module docstring)."""
    stem = name.split(".", 1)[0]
    return _WEIGHT_STEMS.get(stem, stem)


@dataclass(frozen=True)
class _Candidate:
    path: Path
    key: str
    kind: FolderFileKind  # a key of _RANK


def _kind_of(path: Path) -> FolderFileKind | None:
    name = path.name.lower()
    if name.endswith(".safetensors.index.json"):
        return FolderFileKind.SAFETENSORS_INDEX
    if name.endswith(".index.json"):
        return FolderFileKind.INDEX
    if path.suffix.lower() == ".safetensors":
        return FolderFileKind.SAFETENSORS
    if path.suffix.lower() in TORCH_SUFFIXES:
        return FolderFileKind.TORCH
    if path.suffix.lower() == ".json":
        return FolderFileKind.JSON
    return None


def _shard_names(index: Path) -> set[str]:
    """The shard file names an index names (empty when it cannot be read: opening says why)."""
    try:
        held = committed_view(index.parent)[0].get(index.name, index)
        document = json.loads(read_regular(held, limit=MAX_INDEX_BYTES).decode("utf-8"))
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
    # an unfinished sharded save's commit: its new files count, what it supersedes does not
    committed, superseded = committed_view(directory)
    files = [p for p in children if not p.name.startswith(".") and p.name not in superseded]
    files += sorted(directory / name for name in committed if directory / name not in files)
    shards = {
        name: p
        for p in files
        if not p.is_dir() and (kind := _kind_of(p)) is not None and kind.is_index
        for name in _shard_names(p)
    }
    listing: list[FolderEntry] = []
    chosen: dict[str, _Candidate] = {}
    for path in files:
        # by name for anything but a folder: a named pipe must be refused when opened, not
        # skipped as if it were not there
        kind = _kind_of(path) if not path.is_dir() else None
        if path.name in shards:
            index = shards[path.name].name
            listing.append(
                FolderEntry(
                    path.name, key_for(index), FolderFileKind.SHARD, EntryStatus.SHARD, index
                )
            )
            continue
        if kind is None:
            what = "a directory" if path.is_dir() else "not a checkpoint file"
            listing.append(
                FolderEntry(path.name, None, FolderFileKind.OTHER, EntryStatus.IGNORED, what)
            )
            continue
        candidate = _Candidate(path, key_for(path.name), kind)
        held = chosen.get(candidate.key)
        if held is None:
            chosen[candidate.key] = candidate
            continue
        winner, loser = (candidate, held) if _RANK[kind] < _RANK[held.kind] else (held, candidate)
        chosen[candidate.key] = winner
        note = f"{winner.path.name} holds the same key ({winner.key!r}) in a preferred format"
        listing.append(FolderEntry(loser.path.name, None, loser.kind, EntryStatus.SUPERSEDED, note))
    return chosen, listing


def _open_candidate(
    candidate: _Candidate, *, label: str | None = None, listing: FolderListing | None = None
) -> Checkpoint:
    if candidate.kind.is_index:
        return ShardedCheckpoint.from_index(candidate.path, label=label, listing=listing)
    held = committed_view(candidate.path.parent)[0].get(candidate.path.name, candidate.path)
    return open_tensor_file(held, listing=listing)


def open_folder(directory: Path, *, weights: bool = False) -> Checkpoint:
    """Open a checkpoint folder by the rules in the module docstring."""
    chosen, skipped = _scan(directory)
    if not chosen:
        raise no_checkpoint(directory, skipped, NO_CHECKPOINT)
    state = {k: c for k, c in chosen.items() if c.kind is not FolderFileKind.JSON}
    key = weights_key({k: c.kind for k, c in state.items()})
    if not weights and (key is None or len(state) > 1):
        return _open_whole(directory, chosen, skipped, key)
    if key is None:
        listed = [
            FolderEntry(c.path.name, k, c.kind, EntryStatus.UNREAD) for k, c in chosen.items()
        ]
        raise no_checkpoint(directory, [*listed, *skipped], NO_WEIGHTS)
    unread = tuple(
        FolderEntry(c.path.name, None, c.kind, EntryStatus.IGNORED, WEIGHTS_ONLY)
        for k, c in chosen.items()
        if k != key
    )
    return _open_model(
        directory, state[key], FolderListing(state[key].path.name, key, (*unread, *skipped))
    )


def _open_model(directory: Path, model: _Candidate, listing: FolderListing) -> Checkpoint:
    """The folder's model weights, listing the folder's files (a sharded model is labelled
    by the directory, which is what the caller gave)."""
    label = str(directory) if model.kind.is_index else None
    return _open_candidate(model, label=label, listing=listing)


def _open_whole(
    directory: Path, chosen: dict[str, _Candidate], skipped: list[FolderEntry], key: str | None
) -> Checkpoint:
    """Every state file by key; the model's last, so that when the weights-only loader
    refused all the others the folder opens as its model (a ``trainer.save_model()``
    folder: weights, config.json, training_args.bin) without reopening anything."""
    parts: dict[str, Checkpoint] = {}
    refused: dict[str, FolderEntry] = {}
    try:
        for k, candidate in sorted(chosen.items()):
            if k == key or candidate.kind is FolderFileKind.JSON:
                continue
            try:
                parts[k] = _open_candidate(candidate)
            except WeightsOnlyRefusal as exc:  # e.g. a pickled TrainingArguments
                refused[k] = FolderEntry(
                    candidate.path.name, None, candidate.kind, EntryStatus.REFUSED, exc.reason
                )
        if key is not None and not parts:
            return _open_model_alone(directory, chosen, key, refused, skipped)
        if key is not None:
            try:
                parts[key] = _open_candidate(chosen[key])
            except WeightsOnlyRefusal as exc:
                refused[key] = FolderEntry(
                    chosen[key].path.name, None, chosen[key].kind, EntryStatus.REFUSED, exc.reason
                )
        data = {k: _read_json(c.path) for k, c in chosen.items() if c.kind is FolderFileKind.JSON}
    except BaseException:
        for part in parts.values():
            part.close()
        raise
    listing = tuple(
        refused.get(k)
        or FolderEntry(c.path.name, k, parts[k].kind if k in parts else c.kind, EntryStatus.LOADED)
        for k, c in sorted(chosen.items())
    )
    if not parts:
        raise no_checkpoint(directory, [*listing, *skipped], NO_CHECKPOINT)
    return FolderCheckpoint.from_parts(directory, parts, data, (*listing, *skipped))


def _open_model_alone(
    directory: Path,
    chosen: dict[str, _Candidate],
    key: str,
    refused: dict[str, FolderEntry],
    skipped: list[FolderEntry],
) -> Checkpoint:
    """The folder as its model: every other state file was refused (its JSON is not read)."""
    ordered = sorted(chosen)
    others = tuple(
        refused.get(k)
        or FolderEntry(chosen[k].path.name, None, chosen[k].kind, EntryStatus.IGNORED, WEIGHTS_ONLY)
        for k in ordered
        if k != key
    )
    listing = FolderListing(chosen[key].path.name, key, (*others, *skipped), ordered.index(key))
    try:
        return _open_model(directory, chosen[key], listing)
    except WeightsOnlyRefusal as exc:
        model = chosen[key]
        own = FolderEntry(model.path.name, None, model.kind, EntryStatus.REFUSED, exc.reason)
        entries = [*others[: listing.position], own, *others[listing.position :]]
        raise no_checkpoint(directory, entries, NO_CHECKPOINT) from None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(read_regular(path, limit=MAX_INDEX_BYTES).decode("utf-8"))
    except OSError as exc:
        raise CheckpointNotFoundError(f"{path}: cannot read this file ({exc})") from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise HeaderError(f"{path}: a JSON file that does not parse ({exc})") from None
    except RecursionError:
        raise HeaderError(f"{path}: a JSON file nested too deeply to read") from None
