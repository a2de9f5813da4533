"""Read-only access to every checkpoint the CLI accepts, behind one small interface.

* statevault and plain safetensors files: only the header is read on open; tensor bytes are
  streamed in bounded chunks (checksums verified as they pass) when asked for.
* ``.pt`` / ``.pth`` / ``.bin`` files (zip and legacy pre-1.6 format): loaded **only** through
  ``torch.load(..., weights_only=True)``. A file that loader refuses is never unpickled,
  because unpickling can run arbitrary code. Zip files are memory-mapped, so their tensors
  are paged in only when read.
* Hugging Face-style sharded directories: ``model.safetensors.index.json`` plus shards. Shard
  names come from a file we did not write, so each one must be a plain file name inside the
  directory (no ``/``, ``..`` or absolute paths). Symlinks are followed only when they stay in
  the directory, or, in a Hugging Face cache snapshot, in its repository's ``blobs/``.
* Only regular files are read (a named pipe would block forever), see ``_io.open_regular``.

``inspect``, ``verify``, ``diff`` and ``convert`` all work on an :class:`Input`.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import torch

from statevault._checkpoint import Checkpoint
from statevault._dtypes import spec_for
from statevault._format import PREFIX_BYTES
from statevault._io import open_regular, read_regular
from statevault._progress import Progress
from statevault._ties import memory_identity
from statevault._tree import Skeleton, flatten
from statevault._vault import reject_constant
from statevault.errors import (
    CheckpointNotFoundError,
    CorruptFileError,
    HeaderError,
    UnsupportedObjectError,
)

CHUNK_BYTES = 16 << 20  # working-set size for streamed reads: bounded, yet few syscalls
READ_BATCH_BYTES = 256 << 20  # whole-tensor reads between two progress ticks
TORCH_SUFFIXES = frozenset({".pt", ".pth", ".bin", ".ckpt"})
INDEX_NAME = "model.safetensors.index.json"


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
        n = 1
        for dim in self.shape:
            n *= dim
        return n

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


class Input:
    """An opened checkpoint: header facts now, tensor bytes on demand. Close when done."""

    kind: str  # "statevault", "safetensors", "torch", "torch-legacy" or "sharded"
    label: str
    format_version: int | None = None
    metadata: Mapping[str, str]
    tensors: Mapping[str, TensorMeta]
    aliases: Mapping[str, str]
    tree: Skeleton | None
    file_size: int

    @property
    def has_checksums(self) -> bool:
        return any(meta.checksum is not None for meta in self.tensors.values())

    def keys(self) -> list[str]:
        return [*self.tensors, *self.aliases]

    def resolve(self, name: str) -> TensorMeta:
        return self.tensors[self.aliases.get(name, name)]

    def chunks(self, name: str, *, elements: int, verify: bool = True) -> Iterator[torch.Tensor]:
        """The tensor's elements, flattened, in 1-D pieces of at most ``elements`` each."""
        raise NotImplementedError

    def load(self, *, verify: bool = True) -> Any:
        """The whole saved object: nested state as saved, or a flat name -> tensor dict."""
        raise NotImplementedError

    def read_flat(
        self,
        names: Sequence[str] | None = None,
        *,
        verify: bool = True,
        progress: Progress | None = None,
    ) -> dict[str, torch.Tensor]:
        """The named keys (all by default) as a flat name -> tensor dict, tied ones shared."""
        raise NotImplementedError

    def close(self) -> None:
        """Release file handles (idempotent)."""

    def __enter__(self) -> Input:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- safetensors files (ours or anyone's) ------------------------------------------------


class SafetensorsInput(Input):
    """A safetensors file; statevault metadata is used when present."""

    def __init__(self, path: Path) -> None:
        self._checkpoint = Checkpoint(path)
        try:
            self.path = path
            self.label = str(path)
            self.file_size = path.stat().st_size
            self.format_version = self._checkpoint.format_version
            self.kind = "statevault" if self.format_version is not None else "safetensors"
            self.metadata = dict(self._checkpoint.metadata)
            self.aliases = dict(self._checkpoint.aliases)
            self.tree = self._checkpoint.tree
            self.header_digest = self._checkpoint.vault.header_digest is not None
            self.tensors = {
                n: TensorMeta(n, i.dtype, i.shape, i.nbytes, i.code, i.checksum, self.label)
                for n, i in self._checkpoint.tensors.items()
            }
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self._checkpoint.close()

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

    def load(self, *, verify: bool = True) -> Any:
        return self._checkpoint.load(verify=verify)

    def read_flat(
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


def _refusal(path: Path, exc: Exception) -> UnsupportedObjectError:
    # torch's message is long; keep its one informative clause (which global or opcode)
    _, _, after = str(exc).partition("WeightsUnpickler error:")
    detail = next((line.strip() for line in after.splitlines() if line.strip()), "")
    detail = detail.split(" was not an allowed global")[0]
    return UnsupportedObjectError(
        f"{path}: torch's weights-only loader refused this file"
        + (f" ({detail})" if detail else "")
        + ". statevault does not unpickle it: unpickling can run arbitrary code hidden in the "
        "file. If you trust where it came from, load it yourself with torch.load(path, "
        "weights_only=False), keep only tensors, dicts, lists and numbers, and "
        "statevault.save() that; or allow its classes with torch.serialization.add_safe_globals"
    )


def _load_torch(path: Path, *, legacy: bool) -> Any:
    try:
        # mmap keeps a zip checkpoint's tensors on disk until touched; legacy files lack it
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


class TorchInput(Input):
    """A ``torch.save`` file read through the weights-only loader (never plain pickle)."""

    def __init__(self, path: Path, *, legacy: bool) -> None:
        self.label = str(path)
        self.kind = "torch-legacy" if legacy else "torch"
        self.file_size = path.stat().st_size
        self._object = _load_torch(path, legacy=legacy)
        self.metadata = {}
        skeleton, flat = flatten(self._object)
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
        self.tensors = {name: self._meta(name, t) for name, t in self._flat.items()}

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

    def load(self, *, verify: bool = True) -> Any:
        return self._object

    def read_flat(
        self,
        names: Sequence[str] | None = None,
        *,
        verify: bool = True,
        progress: Progress | None = None,
    ) -> dict[str, torch.Tensor]:
        wanted = self.keys() if names is None else list(names)
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


def _find_index(directory: Path) -> Path:
    preferred = directory / INDEX_NAME
    if os.path.lexists(preferred):  # whatever it is: reading it refuses a non-file clearly
        return preferred
    found = sorted(directory.glob("*.safetensors.index.json"))
    if len(found) == 1:
        return found[0]
    what = "several index files: " + ", ".join(p.name for p in found) if found else "no index"
    raise CheckpointNotFoundError(
        f"{directory}: is a directory with {what}; expected a Hugging Face-style sharded "
        f"checkpoint ({INDEX_NAME} next to its *.safetensors shards)"
    )


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


class ShardedInput(Input):
    """Several safetensors shards tied together by an index's ``weight_map``."""

    def __init__(self, directory: Path) -> None:
        self.kind = "sharded"
        self.label = str(directory)
        self.index = _find_index(directory)
        document = _read_index(self.index, directory)
        weight_map = document.get("weight_map") if isinstance(document, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise HeaderError(f"{self.index}: has no 'weight_map' object naming the shards")
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
        self._shards: dict[str, SafetensorsInput] = {}
        self._owner: dict[str, SafetensorsInput] = {}
        try:
            for shard_name in shard_names:
                path = directory / shard_name
                contained(path, directory=directory, what="shard")
                self._shards[shard_name] = SafetensorsInput(path)
            self._check_map(weight_map)
        except BaseException:
            self.close()
            raise
        self.file_size = sum(s.file_size for s in self._shards.values())
        self.format_version = None
        self.tree = None
        self.aliases = {}
        self.tensors = {
            name: self._owner[name].tensors[name] for name in sorted(self._owner, key=_natural)
        }

    def _check_map(self, weight_map: Mapping[str, str]) -> None:
        problems = []
        for name, shard_name in weight_map.items():
            shard = self._shards[shard_name]
            if name not in shard.tensors:
                problems.append(f"{name!r} is mapped to {shard_name} but is not in it")
            else:
                self._owner[name] = shard
        for shard_name, shard in self._shards.items():
            if shard.aliases:
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

    def read_flat(
        self,
        names: Sequence[str] | None = None,
        *,
        verify: bool = True,
        progress: Progress | None = None,
    ) -> dict[str, torch.Tensor]:
        wanted = list(self.tensors) if names is None else list(names)
        flat: dict[str, torch.Tensor] = {}
        for shard in self._shards.values():
            mine = [n for n in wanted if self._owner[n] is shard]
            if mine:
                flat.update(shard.read_flat(mine, verify=verify, progress=progress))
        return {name: flat[name] for name in wanted}

    def load(self, *, verify: bool = True) -> Any:
        return self.read_flat(verify=verify)

    def shards(self) -> list[SafetensorsInput]:
        return list(self._shards.values())

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


# -- dispatch ----------------------------------------------------------------------------


def detect(path: Path) -> str:
    """Which reader ``path`` needs, from its first bytes (the suffix only breaks ties)."""
    if path.is_dir():
        return "sharded"
    fd, _ = open_regular(path)  # a named pipe would block a plain open() forever
    try:
        head = os.pread(fd, PREFIX_BYTES + 1, 0)
    finally:
        os.close(fd)
    if head[PREFIX_BYTES:] == b"{":
        return "safetensors"
    if head.startswith(b"PK\x03\x04"):
        return "torch"
    if head.startswith(b"\x80") or path.suffix.lower() in TORCH_SUFFIXES:
        return "torch-legacy"  # pickle protocol 2 opcode, as written before torch 1.6
    return "safetensors"  # let the safetensors parser explain what is wrong


def open_input(path: str | os.PathLike[str]) -> Input:
    """Open any supported checkpoint for reading (see the module docstring)."""
    where = Path(path)
    if not where.exists():
        raise CheckpointNotFoundError(f"{where}: no such file or directory")
    kind = detect(where)
    if kind == "sharded":
        return ShardedInput(where)
    if kind == "safetensors":
        return SafetensorsInput(where)
    return TorchInput(where, legacy=kind == "torch-legacy")
