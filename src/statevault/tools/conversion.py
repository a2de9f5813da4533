"""convert(): any supported checkpoint -> one statevault file, optionally cast or filtered.

Sources: statevault/safetensors files, ``.pt``/``.pth`` (zip and legacy, weights-only loader
only), Hugging Face sharded directories and distributed (DCP) checkpoint directories, ours
and DCP's own format; the destination is one file or Hugging Face shards. Without ``keys``/``strip_prefix`` the whole
object is kept as saved (nested state, non-tensor values, tied weights). With either, the
output is the flat ``name -> tensor`` dict of the selected tensors, named as ``inspect``
shows them, which is what extracting a model's weights from a training checkpoint needs.
May be imported by: the public package.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from statevault.engine.fsspec_storage import StorageOptions
from statevault.engine.progress import Progress
from statevault.engine.ties import memory_identity
from statevault.errors import InvalidArgumentError, KeyMappingError
from statevault.fileformat.dtypes import DtypeLike, dtype_name, float_dtype
from statevault.fileformat.shards import parse_size
from statevault.fileformat.tree import flatten, numpy_names, unflatten
from statevault.loading.keymap import KeySelection, key_selector
from statevault.readers.base import Checkpoint
from statevault.readers.safetensors_file import SafetensorsCheckpoint
from statevault.readers.sharded import ShardedCheckpoint
from statevault.reports.display import shown
from statevault.reports.load_report import capped
from statevault.saving.save import save
from statevault.tools.arguments import checkpoint_source, key_pattern, prefixes
from statevault.tools.destinations import (
    check_destination,
    destination_file,
    index_of,
    make_folder,
    names_a_folder,
    options_for,
    written,
)

# keys= once checked: a compiled regex (searched in each name) or a test on one name
Selector = re.Pattern[str] | Callable[[str], bool]


@dataclass(frozen=True)
class ConvertReport:
    """What convert wrote."""

    source: str
    destination: str
    source_kind: str
    tensors: int  # tensor keys written (tied aliases included)
    file_size: int
    dropped: tuple[str, ...] = ()  # keys left out by ``keys``
    renamed: int = 0  # keys shortened by ``strip_prefix``
    cast: int = 0  # distinct tensors cast to ``dtype``
    dtype: str | None = None
    flattened: bool = False  # output is a flat dict (keys/strip_prefix given)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "destination": self.destination,
            "source_kind": self.source_kind,
            "tensors": self.tensors,
            "file_size": self.file_size,
            "dropped": list(self.dropped),
            "renamed": self.renamed,
            "cast": self.cast,
            "dtype": self.dtype,
            "flattened": self.flattened,
        }

    def __str__(self) -> str:
        text = (
            f"{shown(self.source)} ({self.source_kind}) -> {shown(self.destination)}: "
            f"{self.tensors} tensor(s), "
            f"{self.file_size:,} bytes"
        )
        if self.cast:
            text += f", {self.cast} cast to {self.dtype}"
        if self.renamed:
            text += f", {self.renamed} renamed"
        if self.dropped:
            text += f", {len(self.dropped)} left out by the key pattern"
        return text


def select(
    names: Sequence[str], *, keys: Selector | None, strip_prefix: Sequence[str]
) -> tuple[dict[str, str], list[str]]:
    """({new name: source name}, dropped names) after filtering and prefix stripping. Pure.

    ``keys``: a compiled regex searched in each name, or a test on one name.
    """
    chosen: dict[str, str] = {}
    dropped: list[str] = []
    wanted = keys.search if isinstance(keys, re.Pattern) else keys
    for name in names:
        if wanted is not None and not wanted(name):
            dropped.append(name)
            continue
        new = next((name[len(p) :] for p in strip_prefix if p and name.startswith(p)), name)
        if not new:
            raise KeyMappingError(
                f"strip_prefix: stripping a prefix from {name!r} leaves an empty name; "
                "strip a shorter prefix or leave the key out with keys="
            )
        if new in chosen:
            raise KeyMappingError(
                f"after stripping prefixes, {chosen[new]!r} and {name!r} would both be named "
                f"{new!r}; narrow the key pattern or strip a longer prefix"
            )
        chosen[new] = name
    if not chosen:
        sample = ", ".join(capped(list(names), 5)) or "(the source has no tensors)"
        pattern = keys.pattern if isinstance(keys, re.Pattern) else getattr(keys, "__name__", keys)
        raise InvalidArgumentError(
            f"keys={pattern!r}: no tensor name matches the pattern; names look like: {sample}"
        )
    return chosen, dropped


def cast_floating(obj: Any, dtype: torch.dtype) -> tuple[Any, int]:
    """``obj`` with every floating-point tensor cast to ``dtype`` (tied ones stay tied).

    numpy values keep their numpy dtype (numpy has no bfloat16, and RNG state must not change).
    """
    skeleton, tensors = flatten(obj)
    keep = numpy_names(skeleton)
    done: dict[tuple[Any, ...], torch.Tensor] = {}
    cast = 0
    result: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if not tensor.is_floating_point() or tensor.dtype == dtype or name in keep:
            result[name] = tensor
            continue
        key = memory_identity(tensor) or (id(tensor),)
        if key not in done:
            done[key] = tensor.detach().to(dtype)
            cast += 1
        result[name] = done[key]
    return unflatten(skeleton, result.__getitem__), cast


def _source_metadata(source: Checkpoint) -> dict[str, str]:
    metadata = dict(source.metadata)
    if isinstance(source, ShardedCheckpoint):
        metadata.pop("total_size", None)  # described the shard set, not the new file
        for alias in source.aliases:  # HF's "removed -> kept": the new file records ties itself
            metadata.pop(alias, None)
    return metadata


@dataclass(frozen=True)
class _Selection:
    """What convert read: the object to write and how the key selection changed it."""

    obj: Any
    dropped: tuple[str, ...] = ()
    renamed: int = 0


def _read_selected(
    source: Checkpoint,
    keys: Selector | None,
    strip_prefix: tuple[str, ...],
    progress: Progress | None,
) -> _Selection:
    """The flat ``name -> tensor`` dict of the tensors ``keys`` selects, prefixes stripped."""
    chosen, dropped = select(source.keys(), keys=keys, strip_prefix=strip_prefix)
    if progress is not None:
        progress.start(sum(source.resolve(n).nbytes for n in chosen.values()))
    flat = source.read(list(chosen.values()), progress=progress)
    renamed = sum(new != old for new, old in chosen.items())
    return _Selection({new: flat[old] for new, old in chosen.items()}, tuple(dropped), renamed)


def _read_whole(source: Checkpoint, progress: Progress | None) -> _Selection:
    """Everything as saved: nested state, non-tensor values, tied weights."""
    total = sum(meta.nbytes for meta in source.tensors.values())
    if progress is not None:
        progress.start(total)
    if isinstance(source, (SafetensorsCheckpoint, ShardedCheckpoint)):
        flat = source.read(progress=progress)
        return _Selection(flat if source.tree is None else unflatten(source.tree, flat.__getitem__))
    obj = source.load()
    if progress is not None:
        progress.advance(total)
    return _Selection(obj)


def convert(
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    *,
    dtype: DtypeLike | None = None,
    keys: KeySelection | None = None,
    strip_prefix: str | Sequence[str] | None = None,
    checksum: bool = True,
    overwrite: bool = False,
    progress: Progress | None = None,
    write_progress: Progress | None = None,
    max_shard_size: int | str | None = None,
    storage_options: StorageOptions | None = None,
) -> ConvertReport:
    """Write ``source`` (any supported kind) as a statevault file at ``destination``, atomically.

    ``dtype`` casts floating-point tensors (ints, bools and complex stay as they are);
    ``keys`` is a regular expression searched in each tensor name (or a callable name ->
    bool, as ``load_into`` takes); ``strip_prefix`` (one
    prefix or several) removes the first matching prefix from each name. ``.pt`` files are
    read only through torch's weights-only loader; a file it refuses raises
    :class:`UnsupportedObjectError`. An existing ``destination`` raises
    :class:`DestinationExistsError` unless ``overwrite=True``; it is then replaced atomically
    (readers see the old file or the new one, never a mix). ``progress`` hears the reading,
    ``write_progress`` the writing (two phases, two bars). ``max_shard_size`` writes
    Hugging Face shards and their index instead of one file (as ``save``); with it,
    ``destination`` may be a directory (existing, or a path ending in ``/``): the shards are
    then ``model-0000N-of-0000M.safetensors`` + ``model.safetensors.index.json`` there, as
    ``from_pretrained`` reads them. Either side may be a URL (``s3://...``, a prefix ending
    in ``/`` for shards); ``storage_options`` (passed to fsspec) serves each URL.

    Example::

        statevault.convert("pytorch_model.bin", "model.safetensors", dtype="bf16")
        statevault.convert("last.ckpt", "weights.safetensors",
                           keys=r"^state_dict\\.", strip_prefix="state_dict.model.")
        statevault.convert("ckpt/step-1000", "hf/", keys=r"^model\\.", strip_prefix="model.",
                           max_shard_size="5GB")
    """
    target = float_dtype(dtype) if dtype is not None else None
    pattern = key_selector(keys) if callable(keys) else key_pattern(keys)
    stripped = prefixes(strip_prefix)
    source_path = checkpoint_source(source)
    if max_shard_size is not None:
        parse_size(max_shard_size)  # refused before anything is read
    destination_path = destination_file(source_path, destination, max_shard_size)
    out_options = options_for(destination_path, storage_options)
    check_destination(
        source_path, destination_path, overwrite=overwrite, storage_options=out_options
    )
    if max_shard_size is not None:
        check_destination(
            source_path,
            index_of(destination_path),
            overwrite=overwrite,
            storage_options=out_options,
        )
    if progress is not None and isinstance(source_path, Path) and source_path.is_file():
        # opening a torch file loads it (legacy ones in full): the first phase of the read
        progress.start(source_path.stat().st_size)
    flattened = pattern is not None or bool(stripped)
    in_options = options_for(source_path, storage_options)
    with Checkpoint(source_path, storage_options=in_options) as opened:
        if flattened:
            selection = _read_selected(opened, pattern, stripped, progress)
        else:
            selection = _read_whole(opened, progress)
        obj, cast = selection.obj, 0
        if target is not None:
            obj, cast = cast_floating(obj, target)
        _, stored = flatten(obj)
        metadata = _source_metadata(opened)
        if (
            isinstance(destination_path, Path)
            and names_a_folder(destination)
            and not destination_path.parent.is_dir()
        ):
            make_folder(destination_path.parent)  # only now: a refused source leaves nothing
        save(
            obj,
            destination_path,
            metadata=metadata,
            checksum=checksum,
            progress=write_progress,
            max_shard_size=max_shard_size,
            storage_options=out_options,
        )
        sharded = max_shard_size is not None
        where, size = written(destination_path, storage_options, sharded=sharded)
        return ConvertReport(
            source=opened.label,
            destination=where,
            source_kind=opened.kind,
            tensors=len(stored),
            file_size=size,
            dropped=selection.dropped,
            renamed=selection.renamed,
            cast=cast,
            dtype=dtype_name(target) if target is not None else None,
            flattened=flattened,
        )
