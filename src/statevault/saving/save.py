"""save(): nested state -> one atomic, checksummed, safetensors-compatible file."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

import torch

from statevault.engine.gcpause import gc_paused
from statevault.engine.progress import Progress
from statevault.engine.ties import find_ties
from statevault.engine.transfer import WriteJob, write_atomically
from statevault.errors import UnsupportedObjectError
from statevault.fileformat import metadata as _vault
from statevault.fileformat.container import plan_layout
from statevault.fileformat.dtypes import DtypeSpec, spec_for
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


def _cpu_bytes_source(tensor: torch.Tensor) -> Any:
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


def _stored_and_aliases(
    tensors: Mapping[str, torch.Tensor],
) -> tuple[list[tuple[str, torch.Tensor, DtypeSpec]], dict[str, str]]:
    """The tensors to write with their specs, and alias -> name for tied ones (not written)."""
    named = list(tensors.items())
    specs = [_spec_or_refuse(name, tensor) for name, tensor in named]
    aliases = find_ties(named)
    stored = [
        (name, tensor, spec)
        for (name, tensor), spec in zip(named, specs, strict=True)
        if not aliases or name not in aliases
    ]
    return stored, aliases


def _stored_shape(tensor: torch.Tensor, spec: DtypeSpec) -> tuple[int, ...]:
    if spec.trailing:
        return (*tensor.shape, spec.trailing)
    return tensor.shape  # a torch.Size; plan_layout makes it a plain tuple


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


def _described(
    obj: Any,
) -> tuple[list[tuple[str, torch.Tensor, DtypeSpec]], dict[str, str]]:
    """The tensors to store, and our metadata's members already encoded as JSON text.

    A function of its own so that the skeleton (Python objects several times the size
    of its text for 20,000 tensors) is freed before the layout and header are built.
    """
    skeleton, tensors = flatten(obj)
    stored, aliases = _stored_and_aliases(tensors)
    dtypes = {name: spec.name for name, _, spec in stored if spec.encoded}
    info = _vault.VaultInfo(
        version=_vault.FORMAT_VERSION, tree=skeleton, has_tree=True, aliases=aliases, dtypes=dtypes
    )
    return stored, _vault.encoded_members(info)


def _jobs(obj: Any) -> tuple[list[WriteJob], dict[str, str]]:
    """What to write, in file order, and our metadata's members as JSON text."""
    stored, members = _described(obj)
    entries = plan_layout(
        (name, spec.code, _stored_shape(tensor, spec), tensor.nbytes)
        for name, tensor, spec in stored
    )
    by_name = {name: tensor for name, tensor, _ in stored}
    return [WriteJob(entry, _cpu_bytes_source(by_name[entry.name])) for entry in entries], members


def _plan(
    obj: Any, user: dict[str, str], checksum: bool
) -> tuple[list[WriteJob], _vault.SlottedHeader]:
    """What to write, in file order, and the header with blank digests to fill in.

    The per-tensor tables of the steps before are freed by then, so they are not alive
    next to the header (megabytes each for 20,000 tensors).
    """
    jobs, members = _jobs(obj)
    entries = [job.entry for job in jobs]
    return jobs, _vault.SlottedHeader(members, entries, user, checksum)


def _save_sharded(
    obj: Any,
    destination: str | os.PathLike[str],
    max_shard_size: int | str,
    user: dict[str, str],
    checksum: bool,
    fsync: bool,
    progress: Progress | None,
) -> None:
    # imported here: saving.sharded builds on this module's helpers
    from statevault.fileformat.shards import parse_size
    from statevault.saving.sharded import save_sharded

    parse_size(max_shard_size)  # a bad size is refused before the state is walked
    skeleton, tensors = flatten(obj)
    stored, aliases = _stored_and_aliases(tensors)
    save_sharded(
        stored,
        aliases,
        skeleton,
        destination,
        max_shard_size=max_shard_size,
        user=user,
        checksum=checksum,
        fsync=fsync,
        progress=progress,
    )


@gc_paused
def save(
    obj: Any,
    destination: str | os.PathLike[str],
    *,
    metadata: Mapping[str, str] | None = None,
    checksum: bool = True,
    fsync: bool = True,
    progress: Progress | None = None,
    max_shard_size: int | str | None = None,
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

    Example::

        statevault.save(model, "model.safetensors")
        statevault.save({"model": model.state_dict(), "optim": opt.state_dict(), "epoch": 3},
                        "ckpt.safetensors", metadata={"run": "baseline"})
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
            obj, destination, max_shard_size, _check_metadata(metadata), checksum, fsync, progress
        )
        return
    jobs, header = _plan(obj, _check_metadata(metadata), checksum)
    # The caller's path as given: Path() would turn "" into "." and drop a trailing "/".
    write_atomically(destination, jobs, header, checksum=checksum, fsync=fsync, progress=progress)
