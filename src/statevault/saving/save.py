"""save(): nested state -> one atomic, checksummed, safetensors-compatible file."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch

from statevault.engine.fsspec_storage import StorageOptions, storage_for
from statevault.engine.progress import Progress
from statevault.engine.storage import LOCAL_STORAGE, Name, Storage
from statevault.engine.ties import find_ties
from statevault.engine.writer import Source, write_atomically
from statevault.errors import UnsupportedObjectError
from statevault.fileformat import metadata as _vault
from statevault.fileformat.container import plan_layout
from statevault.fileformat.dtypes import DtypeSpec, spec_for
from statevault.fileformat.table import TensorEntry
from statevault.fileformat.tree import check_text, flatten

_PLAIN_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)


def _spec_or_refuse(name: str, tensor: torch.Tensor) -> DtypeSpec:
    """The storage spec for ``tensor``, or an error that says why it cannot be stored."""
    spec = spec_for(tensor.dtype)
    if (  # the common case first, in cheap checks: this runs for every tensor
        spec is not None
        and type(tensor) in _PLAIN_TENSOR_TYPES
        and tensor.layout is torch.strided
        and not (tensor.is_nested or tensor.is_quantized or tensor.is_meta)
    ):
        return spec
    if tensor.is_nested:
        reason = "is a nested tensor; save its components (t.unbind()) instead"
    elif tensor.layout != torch.strided:
        reason = f"has {tensor.layout} layout; convert it with .to_dense() first"
    elif tensor.is_quantized:
        reason = "is quantized; save t.int_repr() with its scale/zero_point, or t.dequantize()"
    elif tensor.is_meta:
        reason = "is on the meta device and has no data; materialise it before saving"
    elif type(tensor) not in _PLAIN_TENSOR_TYPES:
        reason = f"is a tensor subclass ({type(tensor).__name__}); save a plain tensor instead"
    else:
        reason = f"has dtype {tensor.dtype}, which statevault cannot store"
    raise UnsupportedObjectError(f"{name}: cannot store this tensor: it {reason}")


def _cpu_bytes_source(tensor: torch.Tensor) -> Source:
    if (
        tensor.is_cpu  # 5x cheaper than tensor.device.type, which builds a device object
        and tensor.is_contiguous()
        and not tensor.is_conj()
        and not tensor.is_neg()
    ):
        return tensor  # written straight from its memory; no per-tensor call needed

    def materialise() -> torch.Tensor:
        # One tensor at a time, so extra memory stays bounded by the largest tensor that
        # needs a copy (non-contiguous views, GPU tensors); contiguous CPU tensors are free.
        with torch.no_grad():
            plain = tensor.detach().resolve_conj().resolve_neg()
            return plain.to("cpu").contiguous()

    return materialise


class _Stored(NamedTuple):
    """The tensors to write, as parallel columns: no tuple per tensor (see ``plan_save``)."""

    names: list[str]
    tensors: list[torch.Tensor]
    specs: list[DtypeSpec]


def _stored_and_aliases(tensors: Mapping[str, torch.Tensor]) -> tuple[_Stored, dict[str, str]]:
    """The tensors to write with their specs, and alias -> name for tied ones (not written)."""
    names = list(tensors)
    values = list(tensors.values())
    specs = [_spec_or_refuse(name, tensor) for name, tensor in zip(names, values, strict=True)]
    aliases = find_ties(zip(names, values, strict=True))
    if aliases:
        kept = [row for row, name in enumerate(names) if name not in aliases]
        names = [names[row] for row in kept]
        values = [values[row] for row in kept]
        specs = [specs[row] for row in kept]
    return _Stored(names, values, specs), aliases


def _stored_shape(tensor: torch.Tensor, spec: DtypeSpec) -> tuple[int, ...]:
    """A plain tuple of ints: the cyclic collector stops tracking those (a torch.Size stays)."""
    if spec.trailing:
        return (*tensor.shape, spec.trailing)
    return tuple(tensor.shape)


def _check_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise UnsupportedObjectError(
            f"metadata must be a mapping of str to str, got {type(metadata)!r}"
        )
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise UnsupportedObjectError(
                f"metadata[{key!r}]: metadata maps str to str (like safetensors); got "
                f"{type(key).__name__} -> {type(value).__name__}. Use json.dumps() for structured values"
            )
        if key in _vault.RESERVED_KEYS:
            raise UnsupportedObjectError(f"metadata[{key!r}]: this key is reserved for statevault")
        check_text(key, f"metadata[{key!r}]", "key")
        check_text(value, f"metadata[{key!r}]", "value")
    return dict(metadata)


def _described(obj: Any) -> tuple[_Stored, dict[str, str]]:
    """The tensors to store, and our metadata's members already encoded as JSON text.

    A function of its own so that the skeleton (Python objects several times the size
    of its text for 20,000 tensors) is freed before the layout and header are built.
    """
    skeleton, tensors = flatten(obj)
    stored, aliases = _stored_and_aliases(tensors)
    dtypes = {
        name: spec.name
        for name, spec in zip(stored.names, stored.specs, strict=True)
        if spec.encoded
    }
    info = _vault.VaultInfo(
        version=_vault.FORMAT_VERSION, tree=skeleton, has_tree=True, aliases=aliases, dtypes=dtypes
    )
    return stored, _vault.encoded_members(info)


def plan_save(
    obj: Any, user: dict[str, str], checksum: bool
) -> tuple[list[TensorEntry], list[Source], _vault.SlottedHeader]:
    """What to write, in file order (entries and their byte sources), and the header with
    blank digests to fill in.

    Columns, not a record per tensor: every container object that lives through a save of
    20,000 tensors is one more for the cyclic collector to count, and enough of them set off
    a full collection of the whole program (the caller's model included). The per-tensor
    tables of the steps before are freed by then, so they are not alive next to the header.
    """
    stored, members = _described(obj)
    names, tensors, specs = stored
    entries = plan_layout(
        (name, spec.code, _stored_shape(tensor, spec), tensor.nbytes)
        for name, tensor, spec in zip(names, tensors, specs, strict=True)
    )
    row = {name: index for index, name in enumerate(names)}
    sources = [_cpu_bytes_source(tensors[row[entry.name]]) for entry in entries]
    del stored, names, tensors, specs, row
    return entries, sources, _vault.SlottedHeader(members, entries, user, checksum)


def _save_sharded(
    obj: Any,
    destination: str,
    storage: Storage,
    max_shard_size: int | str,
    user: dict[str, str],
    checksum: bool,
    fsync: bool,
    progress: Progress | None,
) -> None:
    # imported here: saving.sharded builds on this module's helpers
    from statevault.fileformat.shards import parse_size
    from statevault.saving.sharded import save_sharded
    from statevault.saving.sharded_remote import save_sharded_remote

    parse_size(max_shard_size)  # a bad size is refused before the state is walked
    skeleton, tensors = flatten(obj)
    stored, aliases = _stored_and_aliases(tensors)
    listed = list(zip(stored.names, stored.tensors, stored.specs, strict=True))
    if storage is not LOCAL_STORAGE:  # an object store: the index is the commit marker
        save_sharded_remote(
            listed,
            aliases,
            skeleton,
            destination,
            storage,
            max_shard_size=max_shard_size,
            user=user,
            checksum=checksum,
            progress=progress,
        )
        return
    save_sharded(
        listed,
        aliases,
        skeleton,
        destination,
        max_shard_size=max_shard_size,
        user=user,
        checksum=checksum,
        fsync=fsync,
        progress=progress,
    )


def save(
    obj: Any,
    destination: str | os.PathLike[str],
    *,
    metadata: Mapping[str, str] | None = None,
    checksum: bool = True,
    fsync: bool = True,
    progress: Progress | None = None,
    max_shard_size: int | str | None = None,
    storage_options: StorageOptions | None = None,
) -> None:
    """Save a module's state, a state dict or training state to ``destination``, atomically.

    The file is a valid safetensors file. Nested structure, tied weights, exact dtypes and
    per-tensor checksums ride along as JSON in its metadata. If the process dies mid-save,
    the previous file at ``destination`` is untouched. A save that returns wrote a file that
    verifies, even while other threads update the tensors in place (each copied piece is
    the memory as it was when copied; not one snapshot across tensors). A symlink's target
    is replaced and keeps its mode; directories, special and unwritable files are refused;
    OS errors raise ``CheckpointWriteError`` (an ``OSError``). See docs/saving.md.
    ``progress`` hears the bytes to write, then each piece written (the CLI draws a bar).
    ``max_shard_size`` (bytes, or "5GB" in decimal units) writes Hugging Face shards and
    their index beside ``destination``, replaced as a whole (docs/sharding.md).
    ``destination`` may be a URL (``s3://bucket/key``, any fsspec scheme) configured by
    ``storage_options`` (passed to fsspec); the object appears whole when its upload ends,
    and shards are uploaded in parallel with their index written last (the commit).

    Example::

        statevault.save(model, "model.safetensors")
        statevault.save({"model": model.state_dict(), "optim": opt.state_dict(), "epoch": 3},
                        "ckpt.safetensors", metadata={"run": "baseline"})
    """
    save_to(
        obj,
        destination,
        storage=storage_for(destination, storage_options),
        metadata=metadata,
        checksum=checksum,
        fsync=fsync,
        progress=progress,
        max_shard_size=max_shard_size,
    )


def save_to(
    obj: Any,
    name: Name,
    *,
    storage: Storage,
    metadata: Mapping[str, str] | None = None,
    checksum: bool = True,
    fsync: bool = True,
    progress: Progress | None = None,
    max_shard_size: int | str | None = None,
) -> None:
    """:func:`save` into any storage: the internal seam for other backends and for tests.

    Tests hand it a storage that fails on purpose (``tests/helpers/storage.py``); the
    checkpoint manager and object storage will hand it theirs. Not exported: ``save``
    writes to local paths, the only storage there is so far.
    """
    if sys.byteorder != "little":
        raise UnsupportedObjectError(
            "statevault writes little-endian files; big-endian hosts are not supported"
        )
    if isinstance(obj, type):  # save(Model, path): the class, where a model belongs
        raise UnsupportedObjectError(
            f"save: got the class {obj.__qualname__}, not a model: pass an instance, e.g. "
            f"model = {obj.__qualname__}(...); statevault.save(model, path) (or its state_dict())"
        )
    if max_shard_size is not None:
        _save_sharded(
            obj,
            os.fspath(name),
            storage,
            max_shard_size,
            _check_metadata(metadata),
            checksum,
            fsync,
            progress,
        )
        return
    entries, sources, header = plan_save(obj, _check_metadata(metadata), checksum)
    # The caller's name as given: Path() would turn "" into "." and drop a trailing "/".
    write_atomically(
        storage, name, entries, sources, header, checksum=checksum, fsync=fsync, progress=progress
    )
