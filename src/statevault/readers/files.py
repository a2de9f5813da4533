"""The single-file and sharded readers behind :func:`statevault.open_checkpoint`.

* statevault and plain safetensors files: only the header is read on open; tensor bytes are
  streamed in bounded chunks (checksums verified as they pass) when asked for.
* ``.pt`` / ``.pth`` / ``.bin`` files (zip and legacy pre-1.6 format): loaded **only** through
  ``torch.load(..., weights_only=True)``. A file that loader refuses is never unpickled,
  because unpickling can run arbitrary code. Zip files are memory-mapped, so their tensors
  are paged in only when read.
* Hugging Face-style shard indexes: ``model.safetensors.index.json`` or
  ``pytorch_model.bin.index.json`` plus shards. Shard names come from a file we did not
  write, so each one must be a plain file name inside the index's directory (no ``/``,
  ``..`` or absolute paths). Symlinks are followed only when they stay in the directory,
  or, in a Hugging Face cache snapshot, in its repository's ``blobs/``.
* Only regular files are read (a named pipe would block forever), see ``storage.open_regular``.

Each is a :class:`~statevault.readers.base.Reader`; folders are in ``_folder``, the dispatch in
``_open``.
"""

from __future__ import annotations

import functools
import json
import os
import pickle
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import torch

from statevault.engine.progress import Progress
from statevault.engine.storage import read_regular
from statevault.engine.ties import memory_identity
from statevault.errors import (
    CheckpointKindError,
    CheckpointNotFoundError,
    CorruptFileError,
    HeaderError,
    NotACheckpointError,
    StateVaultError,
    UnsupportedObjectError,
)
from statevault.fileformat.container import PREFIX_BYTES
from statevault.fileformat.dtypes import spec_for
from statevault.fileformat.metadata import reject_constant
from statevault.fileformat.tree import Skeleton, flatten, unflatten
from statevault.readers.base import Reader, TensorMeta, top_level_objects, tree_versions
from statevault.readers.safetensors_file import Checkpoint, usable_device
from statevault.readers.sniff import DESCRIPTIONS, TORCH_SUFFIXES, sniff
from statevault.readers.weights_only import numpy_arrays_allowed

CHUNK_BYTES = 16 << 20  # working-set size for streamed reads: bounded, yet few syscalls
READ_BATCH_BYTES = 256 << 20  # whole-tensor reads between two progress ticks
INDEX_NAME = "model.safetensors.index.json"


# -- safetensors files (ours or anyone's) ------------------------------------------------


class SafetensorsInput(Reader):
    """A safetensors file; statevault metadata is used when present.

    Reads go straight into destination memory on the parallel path of :class:`Checkpoint`.
    ``tree=False`` drops the nested-state tree on open (``load_into`` reads tensors by name,
    and for 20,000 tensors the tree's text is megabytes that would stay alive otherwise).
    """

    def __init__(self, path: Path | Checkpoint, *, tree: bool = True) -> None:
        self._owned = not isinstance(path, Checkpoint)
        self._checkpoint = path if isinstance(path, Checkpoint) else Checkpoint(path)
        try:
            self.path = self._checkpoint.path
            self.label = str(self.path)
            self.file_size = self.path.stat().st_size
            self.format_version = self._checkpoint.format_version
            self.kind = "statevault" if self.format_version is not None else "safetensors"
            self.metadata = self._checkpoint.metadata
            self.aliases = self._checkpoint.aliases
            self._dropped_tree = False
            if not tree and self._owned and self._checkpoint.vault.has_tree:
                vault = self._checkpoint.vault
                self._checkpoint.vault = replace(vault, tree=None, tree_text=None, has_tree=False)
                self._dropped_tree = True
        except BaseException:
            self.close()
            raise
        self._facts: tuple[dict[str, Skeleton], dict[str, Any] | None] | None = None

    @property
    def checkpoint(self) -> Checkpoint:
        """The opened file (for whole-file scans such as ``verify``)."""
        return self._checkpoint

    @property
    def tree(self) -> Skeleton | None:  # type: ignore[override]
        return self._checkpoint.tree

    @functools.cached_property
    def tensors(self) -> Mapping[str, TensorMeta]:
        # built on first use: load_into never needs 20,000 of these objects
        return {
            n: TensorMeta(n, i.dtype, i.shape, i.nbytes, i.code, i.checksum, self.label)
            for n, i in self._checkpoint.tensors.items()
        }

    @property
    def has_checksums(self) -> bool:
        return self._checkpoint.has_checksums

    def keys(self) -> list[str]:
        return self._checkpoint.keys()

    def signature(self, name: str) -> tuple[tuple[int, ...], torch.dtype]:
        # not resolve(): it builds a TensorInfo, and this runs once per model key
        return self._checkpoint.signature(name)

    def close(self) -> None:
        if self._owned:
            self._checkpoint.close()

    def fill(
        self,
        pairs: Iterable[tuple[str, torch.Tensor]],
        *,
        verify: bool,
        dtypes_match: bool = False,
    ) -> None:
        """Copy each named tensor into its destination (which has the same shape).

        Contiguous CPU/CUDA destinations of the stored dtype are read into directly;
        others through a temporary. ``dtypes_match``: the caller has checked that every
        destination has its tensor's stored dtype, so that is not looked up again per
        tensor (~10 ms for 20,000).
        """
        staged: list[tuple[str, torch.Tensor]] = []
        aliases = self.aliases
        signature = self._checkpoint.signature

        def direct() -> Iterator[tuple[str, torch.Tensor]]:
            # a generator, not a list: one tuple per tensor is 1 MiB for 20,000 tensors
            for name, dest in pairs:
                stored = aliases.get(name, name)
                if (
                    # dest.device.type in DIRECT_DEVICES, without building a torch.device
                    # and asking its type (240 -> 40 ns, for each of 20,000 tensors)
                    (dest.is_cpu or dest.is_cuda)
                    and dest.is_contiguous()
                    and (dtypes_match or dest.dtype == signature(stored)[1])
                ):
                    yield stored, dest
                else:
                    staged.append((stored, dest))

        self._checkpoint.read_into(direct(), verify=verify)
        if staged:
            # Other dtype or device: read into a temporary, then copy (and cast) across.
            fresh = self._checkpoint.read({n for n, _ in staged}, verify=verify)
            with torch.no_grad():
                for name, dest in staged:
                    dest.copy_(fresh[name])

    def _tree_facts(self) -> tuple[dict[str, Skeleton], dict[str, Any] | None]:
        """The tree's top-level objects and its module versions, worked out once per reader.

        A tree dropped on open is parsed again from the file here, once, and only the small
        results are kept: paid only by loads that need extra state or torch's path.
        """
        if self._facts is None:
            if self._dropped_tree:
                with Checkpoint(self.path) as again:
                    tree = again.tree
            else:
                tree = self._checkpoint.tree
            self._facts = (top_level_objects(tree), tree_versions(tree))
        return self._facts

    def stored_object(self, key: str) -> tuple[bool, Any]:
        """A module's non-tensor extra state at ``key`` (see :meth:`Reader.stored_object`)."""
        node = self._tree_facts()[0].get(key)
        if node is None:
            return False, None
        try:
            return True, unflatten(node, lambda name: self._checkpoint.read([name])[name])
        except HeaderError as exc:
            raise HeaderError(f"{self.path}: {exc}") from None

    def torch_versions(self) -> dict[str, Any] | None:
        """See :meth:`Reader.torch_versions`."""
        return self._tree_facts()[1]

    def raw_chunks(
        self, name: str, *, chunk_bytes: int = CHUNK_BYTES, verify: bool = False
    ) -> Iterator[bytearray]:
        """The stored bytes of ``name`` in pieces of at most ``chunk_bytes`` (fresh buffers)."""
        return self._checkpoint.stream(name, chunk_bytes=chunk_bytes, verify=verify)

    def chunks(self, name: str, *, elements: int, verify: bool = True) -> Iterator[torch.Tensor]:
        dtype = self.tensors[name].dtype
        for buffer in self.raw_chunks(
            name, chunk_bytes=max(1, elements) * dtype.itemsize, verify=verify
        ):
            yield torch.frombuffer(buffer, dtype=torch.uint8).view(dtype)

    def load(self, *, device: str | torch.device = "cpu", verify: bool = True) -> Any:
        return self._checkpoint.load(device=device, verify=verify)

    def read(
        self,
        names: Sequence[str] | None = None,
        *,
        verify: bool = True,
        progress: Progress | None = None,
    ) -> dict[str, torch.Tensor]:
        """Keys (all by default; aliases share their target's tensor) as a flat dict.

        Reads go in batches of about ``READ_BATCH_BYTES`` so ``progress`` can tick while
        each batch still gets the reader's parallel, direct-to-memory path.
        """
        wanted = self.keys() if names is None else list(names)
        result: dict[str, torch.Tensor] = {}
        batch: list[str] = []
        size = 0
        for i, name in enumerate(wanted):
            batch.append(name)
            size += self.resolve(name).nbytes
            if size >= READ_BATCH_BYTES or i == len(wanted) - 1:
                result.update(self._checkpoint.read(batch, verify=verify))
                if progress is not None:
                    progress.advance(size)
                batch, size = [], 0
        return result


# -- torch pickles, weights-only ---------------------------------------------------------


class WeightsOnlyRefusal(UnsupportedObjectError):
    """The file needs a real unpickler (more than tensors and numpy arrays) to be read.

    ``reason`` is the short form a folder listing shows.
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def _refusal(path: Path, exc: Exception) -> UnsupportedObjectError:
    # torch's message is long; keep its one informative clause (which global or opcode)
    _, _, after = str(exc).partition("WeightsUnpickler error:")
    detail = next((line.strip() for line in after.splitlines() if line.strip()), "")
    detail = detail.split(" was not an allowed global")[0]
    reason = "torch's weights-only loader refused it" + (f" ({detail})" if detail else "")
    return WeightsOnlyRefusal(
        f"{path}: torch's weights-only loader refused this file"
        + (f" ({detail})" if detail else "")
        + ". statevault does not unpickle it: unpickling can run arbitrary code hidden in the "
        "file. If you trust where it came from, load it yourself with torch.load(path, "
        "weights_only=False), keep only tensors, dicts, lists and numbers, and "
        "statevault.save() that; or allow its classes with torch.serialization.add_safe_globals",
        reason=reason,
    )


def _load_torch(path: Path, *, legacy: bool) -> Any:
    try:
        # mmap keeps a zip checkpoint's tensors on disk until touched; legacy files lack it
        with numpy_arrays_allowed():
            return torch.load(path, map_location="cpu", weights_only=True, mmap=not legacy)
    except pickle.UnpicklingError as exc:
        if "weights only load failed" in str(exc).lower():
            raise _refusal(path, exc) from None
        raise CorruptFileError(
            f"{path}: not a readable PyTorch file ({str(exc).splitlines()[0]}); it is damaged "
            "or in another format"
        ) from None
    except Exception as exc:  # torch's loader fails in many ways on damaged or odd files
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise CorruptFileError(
            f"{path}: torch could not read this file ({type(exc).__name__}: {first}); it is "
            "damaged, truncated, or uses a dtype its format cannot hold (legacy pre-1.6 files "
            "lack uint16/32/64, float8, float4 and complex32 storages)"
        ) from None


class TorchInput(Reader):
    """A ``torch.save`` file read through the weights-only loader (never plain pickle)."""

    def __init__(self, path: Path, *, legacy: bool) -> None:
        self.label = str(path)
        self.kind = "torch-legacy" if legacy else "torch"
        self.file_size = path.stat().st_size
        self._object = _load_torch(path, legacy=legacy)
        self.metadata = {}
        try:
            skeleton, flat = flatten(self._object)
        except UnsupportedObjectError as exc:
            raise UnsupportedObjectError(
                f"{path}: the weights-only loader read it, but part of it cannot be held "
                f"without pickle: {exc}"
            ) from None
        self.tree = skeleton
        self._flat: dict[str, torch.Tensor] = {}
        aliases: dict[str, str] = {}
        owners: dict[tuple[Any, ...], str] = {}
        for name, tensor in flat.items():
            ident = memory_identity(tensor) if tensor.layout == torch.strided else None
            if ident is not None and ident in owners:
                aliases[name] = owners[ident]  # tied weights, as save() would store them
                continue
            if ident is not None:
                owners[ident] = name
            self._flat[name] = tensor
        self.aliases = aliases
        self._tensors = {name: self._meta(name, t) for name, t in self._flat.items()}

    def _meta(self, name: str, tensor: torch.Tensor) -> TensorMeta:
        spec = spec_for(tensor.dtype)
        shape = tuple(tensor.shape)
        nbytes = tensor.numel() * tensor.element_size()
        code = spec.code if spec is not None else None
        return TensorMeta(name, tensor.dtype, shape, nbytes, code, None, self.label)

    def chunks(self, name: str, *, elements: int, verify: bool = True) -> Iterator[torch.Tensor]:
        flat = self._flat[name].detach().reshape(-1)
        step = max(1, elements)
        for start in range(0, flat.numel(), step):
            yield flat[start : start + step]

    @property
    def tensors(self) -> Mapping[str, TensorMeta]:
        return self._tensors

    def load(self, *, device: str | torch.device = "cpu", verify: bool = True) -> Any:
        if usable_device(device).type == "cpu":
            return self._object  # exactly what the weights-only loader built
        return super().load(device=device, verify=verify)

    def fill(
        self,
        pairs: Iterable[tuple[str, torch.Tensor]],
        *,
        verify: bool,
        dtypes_match: bool = False,
    ) -> None:
        with torch.no_grad():
            for name, dest in pairs:
                dest.copy_(self._flat[self.aliases.get(name, name)])

    def read(
        self,
        names: Sequence[str] | None = None,
        *,
        verify: bool = True,
        progress: Progress | None = None,
    ) -> dict[str, torch.Tensor]:
        wanted = self.keys() if names is None else list(names)
        unknown = [n for n in wanted if self.aliases.get(n, n) not in self._flat]
        if unknown:
            raise KeyError(f"{self.label}: no tensor named {unknown[0]!r}")
        result = {n: self._flat[self.aliases.get(n, n)] for n in wanted}
        if progress is not None:
            progress.advance(sum(self.resolve(n).nbytes for n in wanted))
        return result

    def close(self) -> None:
        self._object = None
        self._flat = {}


# -- Hugging Face sharded directories ----------------------------------------------------


def check_shard_name(name: object, *, index: Path) -> str:
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


MAX_INDEX_BYTES = 100_000_000  # as for a header: a real index is kilobytes


def _read_index(index: Path, directory: Path) -> Any:
    """The index's JSON document; refuses non-regular, oversized or over-deep files."""
    raw = read_regular(contained(index, directory=directory, what="index"), limit=MAX_INDEX_BYTES)
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=reject_constant)
    except UnicodeDecodeError as exc:
        raise HeaderError(f"{index}: not valid UTF-8 (at byte {exc.start})") from None
    except ValueError as exc:
        raise HeaderError(f"{index}: not valid JSON ({exc})") from None
    except RecursionError:
        raise HeaderError(f"{index}: JSON is nested too deeply to be an index") from None


class ShardedInput(Reader):
    """Shards (safetensors or torch files) tied together by an index's ``weight_map``.

    ``index`` is the index file (``model.safetensors.index.json``,
    ``pytorch_model.bin.index.json``); ``label`` names it in messages (its directory, when
    the directory was what the caller gave).
    """

    def __init__(self, index: Path, *, tree: bool = True, label: str | None = None) -> None:
        self.kind = "sharded"
        self.label = label or str(index)
        self.index = index
        directory = index.parent
        document = _read_index(self.index, directory)
        weight_map = document.get("weight_map") if isinstance(document, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise HeaderError(
                f"{self.index}: an index file with no 'weight_map' object naming the shards"
            )
        extra = document.get("metadata") or {}
        if not isinstance(extra, dict):
            raise HeaderError(f"{self.index}: 'metadata' must be an object")
        try:
            self.metadata = {
                str(k): v if isinstance(v, str) else json.dumps(v) for k, v in extra.items()
            }
        except RecursionError:
            raise HeaderError(f"{self.index}: 'metadata' is nested too deeply") from None
        shard_names = sorted({check_shard_name(v, index=self.index) for v in weight_map.values()})
        self._shards: dict[str, Reader] = {}
        self._owner: dict[str, Reader] = {}
        try:
            for shard_name in shard_names:
                shard_path = directory / shard_name
                contained(shard_path, directory=directory, what="shard")
                if not os.path.lexists(shard_path):  # a pipe is refused by open_file
                    raise CheckpointNotFoundError(
                        f"{self.index}: names shard {shard_name}, which is not in {directory}"
                    )
                self._shards[shard_name] = open_file(shard_path, tree=tree)
            self._check_map(weight_map)
        except BaseException:
            self.close()
            raise
        self.file_size = sum(s.file_size for s in self._shards.values())
        self.format_version = None
        self.tree = None
        self.aliases = {
            name: shard.aliases[name]
            for name, shard in self._owner.items()
            if name in shard.aliases
        }
        self._tensors = {
            name: self._owner[name].tensors[name]
            for name in sorted(self._owner, key=_natural)
            if name not in self.aliases
        }

    @property
    def tensors(self) -> Mapping[str, TensorMeta]:
        return self._tensors

    def signature(self, name: str) -> tuple[tuple[int, ...], torch.dtype]:
        return self._owner[name].signature(name)

    def leaves(self) -> list[Reader]:
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
            by_shard.setdefault(id(self._owner[name]), []).append((name, dest))
        for shard in self._shards.values():
            mine = by_shard.get(id(shard))
            if mine:
                shard.fill(mine, verify=verify, dtypes_match=dtypes_match)

    def _check_map(self, weight_map: Mapping[str, str]) -> None:
        problems = []
        for name, shard_name in weight_map.items():
            shard = self._shards[shard_name]
            if name in shard.tensors or name in shard.aliases:  # torch shards may hold ties
                self._owner[name] = shard
            else:
                problems.append(f"{name!r} is mapped to {shard_name} but is not in it")
        for shard_name, shard in self._shards.items():
            if shard.aliases and shard.kind not in ("torch", "torch-legacy"):
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

    def chunks(self, name: str, *, elements: int, verify: bool = True) -> Iterator[torch.Tensor]:
        return self._owner[name].chunks(name, elements=elements, verify=verify)

    def read(
        self,
        names: Sequence[str] | None = None,
        *,
        verify: bool = True,
        progress: Progress | None = None,
    ) -> dict[str, torch.Tensor]:
        wanted = self.keys() if names is None else list(names)
        unknown = [n for n in wanted if n not in self._owner]
        if unknown:
            raise KeyError(f"{self.label}: no tensor named {unknown[0]!r}")
        by_shard: dict[int, list[str]] = {}
        for name in wanted:  # one pass: not every name once per shard
            by_shard.setdefault(id(self._owner[name]), []).append(name)
        flat: dict[str, torch.Tensor] = {}
        for shard in self._shards.values():
            mine = by_shard.get(id(shard))
            if mine:
                flat.update(shard.read(mine, verify=verify, progress=progress))
        return {name: flat[name] for name in wanted}

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


# -- one file ---------------------------------------------------------------------------


def open_file(path: Path, *, tree: bool = True) -> Reader:
    """Open one file of any supported kind (a shard index opens its shards)."""
    try:
        kind = sniff(path)
    except StateVaultError:
        raise  # already says what is wrong (a pipe, no permission), in our words
    except OSError as exc:
        raise CheckpointNotFoundError(f"{path}: cannot read this file ({exc})") from exc
    if kind == "index":
        return ShardedInput(path, tree=tree)
    if kind == "torch":
        if not is_torch_zip(path):
            raise not_a_checkpoint(path, "a zip archive without the data.pkl of a torch file")
        return TorchInput(path, legacy=False)
    if kind == "torch-legacy":
        return TorchInput(path, legacy=True)
    size = path.stat().st_size
    if kind == "unknown" and size == 0:
        raise not_a_checkpoint(path, "empty")
    if kind == "unknown" and path.suffix.lower() in TORCH_SUFFIXES:
        raise NotACheckpointError(
            f"{path}: not a checkpoint: is named like a torch file but is neither a torch zip "
            "archive nor a legacy torch file (no magic number at its start); it is damaged, "
            "truncated or in another format"
        )
    if kind == "pickle":
        raise WeightsOnlyRefusal(
            f"{path}: is {DESCRIPTIONS['pickle']}: unpickling can run arbitrary code hidden in "
            "the file. If you trust where it came from, load it yourself with pickle, keep only "
            "tensors, numpy arrays, dicts, lists and numbers, and statevault.save() that",
            reason=DESCRIPTIONS["pickle"],
        )
    if kind == "json":
        raise CheckpointKindError(
            f"{path}: is a JSON file, not a checkpoint (a shard index is named "
            f"*.index.json and has a 'weight_map', like {INDEX_NAME})"
        )
    if kind == "unknown" and not _named_or_sized_like_safetensors(path, size):
        raise not_a_checkpoint(path, "neither safetensors nor torch")
    return SafetensorsInput(path, tree=tree)  # a damaged one: its parser says what is wrong


def _named_or_sized_like_safetensors(path: Path, size: int) -> bool:
    """Whether an unrecognised file is a damaged safetensors file rather than another format.

    Named ``*.safetensors``, or its first 8 bytes are a header length that fits in the file:
    then the safetensors parser names the damage (exit 1 in the CLI). A photo, a text file
    or an archive is "not a checkpoint" instead (exit 2), never "damaged".
    """
    if path.suffix.lower() == ".safetensors":
        return True
    with path.open("rb") as handle:
        prefix = handle.read(PREFIX_BYTES)
    return len(prefix) == PREFIX_BYTES and int.from_bytes(prefix, "little") <= size - PREFIX_BYTES


def is_torch_zip(path: Path) -> bool:
    """Whether a zip archive holds a torch file's ``data.pkl``; True when unreadable (damaged)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("data.pkl") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return True  # a damaged torch file: its own reader names the damage


def not_a_checkpoint(path: Path, what: str) -> NotACheckpointError:
    return NotACheckpointError(
        f"{path}: not a checkpoint ({what}): a safetensors file starts with an 8-byte header "
        "length and a JSON header, a torch file is a zip archive or a pickle"
    )
