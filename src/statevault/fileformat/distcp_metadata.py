"""DCP's own ``.metadata`` (``FileSystemWriter``), read without unpickling anything it names.

``torch.distributed.checkpoint``'s default writer pickles a ``Metadata`` dataclass: per
state-dict key a ``TensorStorageMetadata`` (dtype, global size, chunks) or a
``BytesStorageMetadata``, and per stored piece a ``_StorageInfo`` (file, offset, length)
keyed by a ``MetadataIndex``. Loading that pickle with ``pickle.load`` would run whatever
callable a crafted file names. This module's unpickler resolves only the globals such a
file holds (DCP's metadata classes, ``torch.Size``, dtypes, the layout, ``pathlib`` paths)
and maps each one to an inert stand-in defined here: no class of torch is instantiated,
nothing of ``torch.distributed`` is imported, and any other global is refused before it is
called. torch's weights-only unpickler was not used: its public entry (``torch.load``)
reads only torch's own file formats, not a bare pickle, and its bare-pickle form takes its
allowlist from a process-wide set that ``safe_globals`` mutates for every thread.

The stand-ins are then checked field by field and turned into :class:`DistcpIndex`. Pure:
bytes in, values out, no I/O. May be imported by ``readers`` and above.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from statevault.errors import HeaderError, UnsupportedObjectError

METADATA_NAME = ".metadata"
MAX_METADATA_BYTES = 256 << 20  # as statevault's own DCP index

_METADATA_MODULE = "torch.distributed.checkpoint.metadata"
_STUB_NAMES = {
    (_METADATA_MODULE, "Metadata"),
    (_METADATA_MODULE, "TensorStorageMetadata"),
    (_METADATA_MODULE, "BytesStorageMetadata"),
    (_METADATA_MODULE, "ChunkStorageMetadata"),
    (_METADATA_MODULE, "TensorProperties"),
    (_METADATA_MODULE, "MetadataIndex"),
    (_METADATA_MODULE, "StorageMeta"),
    (_METADATA_MODULE, "_MEM_FORMAT_ENCODING"),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
}
_PATH_NAMES = {("pathlib", n) for n in ("PosixPath", "WindowsPath", "PurePosixPath", "Path")}


class _Stub:
    """An inert record of what the pickle said: constructor arguments and state."""

    def __init__(self, *args: object) -> None:
        self.args = args
        self.state: object = None

    def __setstate__(self, state: object) -> None:
        self.state = state

    def field(self, name: str) -> Any:
        if isinstance(self.state, dict):
            return self.state.get(name)
        return None


_STUBS: dict[tuple[str, str], type[_Stub]] = {
    key: type(key[1], (_Stub,), {}) for key in sorted(_STUB_NAMES)
}


def _size(values: object = ()) -> tuple[int, ...]:
    return tuple(values) if isinstance(values, (tuple, list)) else (-1,)


def _layout(name: object) -> str:
    return str(name)


def _path(*parts: object) -> str:
    return "/".join(str(part) for part in parts)


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the allowlisted globals, to stand-ins; refuses everything else."""

    def __init__(self, data: bytes, source: str) -> None:
        super().__init__(io.BytesIO(data))
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key in _STUBS:
            return _STUBS[key]
        if key == ("torch", "Size"):
            return _size
        if key == ("torch.serialization", "_get_layout"):
            return _layout
        if key in _PATH_NAMES:
            return _path
        # the module's own dict: getattr could run torch's lazy imports for a crafted name
        if module == "torch" and isinstance(vars(torch).get(name), torch.dtype):
            return vars(torch)[name]
        raise UnsupportedObjectError(
            f"{self.source}: names {module}.{name}, which DCP's metadata never holds: the "
            "file is damaged or was crafted to run code when unpickled; statevault refused "
            "it without calling anything"
        )

    def persistent_load(self, pid: object) -> Any:
        raise UnsupportedObjectError(f"{self.source}: holds a persistent id; DCP never writes one")


@dataclass(frozen=True)
class StoredRange:
    """Where an item's bytes are: a ``.distcp`` file of the directory, an offset, a length."""

    file: str
    offset: int
    length: int


@dataclass(frozen=True)
class DistcpChunk:
    """One stored piece of a tensor: its box in the global tensor and its bytes."""

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    stored: StoredRange


@dataclass(frozen=True)
class DistcpTensor:
    dtype: torch.dtype
    shape: tuple[int, ...]
    chunks: tuple[DistcpChunk, ...]


@dataclass(frozen=True)
class DistcpBytes:
    """A non-tensor value (a torch.save pickle written by DCP's planner): never unpickled."""

    stored: StoredRange


@dataclass(frozen=True)
class DistcpIndex:
    items: Mapping[str, DistcpTensor | DistcpBytes]
    version: str | None

    @property
    def files(self) -> list[str]:
        named: set[str] = set()
        for item in self.items.values():
            if isinstance(item, DistcpBytes):
                named.add(item.stored.file)
            else:
                named.update(chunk.stored.file for chunk in item.chunks)
        return sorted(named)


def decode(data: bytes, *, source: str) -> DistcpIndex:
    """The checked contents of a ``.metadata`` file's bytes; ``source`` names it in errors.

    Raises UnsupportedObjectError for a global outside the allowlist, HeaderError for
    anything else that is not DCP metadata.
    """
    try:
        root = _RestrictedUnpickler(data, source).load()
    except UnsupportedObjectError:
        raise
    except Exception as exc:  # a damaged pickle fails in many ways; none is ours to pass on
        raise HeaderError(f"{source}: not a readable DCP metadata pickle ({exc})") from None
    return _Checker(source).index(root)


class _Checker:
    """From stand-ins to values, naming the key and field of the first thing wrong."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, what: str) -> HeaderError:
        return HeaderError(
            f"{self.source}: {what}; the file is not DCP metadata as torch writes it"
        )

    def stub(self, value: object, name: str, where: str) -> _Stub:
        if isinstance(value, _STUBS[(_MODULE_OF.get(name, _METADATA_MODULE), name)]):
            return value
        raise self.fail(f"{where}: expected a {name}, found {type(value).__name__}")

    def ints(self, value: object, where: str, *, length: int | None = None) -> tuple[int, ...]:
        if not isinstance(value, tuple) or not all(type(v) is int and v >= 0 for v in value):
            raise self.fail(f"{where}: expected a torch.Size of sizes >= 0, found {value!r:.80}")
        if length is not None and len(value) != length:
            raise self.fail(f"{where}: has {len(value)} dimension(s), the tensor has {length}")
        return value

    def index(self, root: object) -> DistcpIndex:
        meta = self.stub(root, "Metadata", "the pickle")
        items = meta.field("state_dict_metadata")
        storage = meta.field("storage_data")
        if not isinstance(items, dict) or not isinstance(storage, dict):
            raise self.fail("Metadata lacks state_dict_metadata or storage_data dicts")
        ranges = self.ranges(storage)
        decoded: dict[str, DistcpTensor | DistcpBytes] = {}
        for key, item in items.items():
            if not isinstance(key, str):
                raise self.fail(f"state_dict_metadata has a key of type {type(key).__name__}")
            decoded[key] = self.item(key, item, ranges)
        version = meta.field("version")
        return DistcpIndex(decoded, version if isinstance(version, str) else None)

    def ranges(
        self, storage: dict[object, object]
    ) -> dict[tuple[str, tuple[int, ...] | None], StoredRange]:
        found: dict[tuple[str, tuple[int, ...] | None], StoredRange] = {}
        for index, info in storage.items():
            where = "storage_data"
            at = self.stub(index, "MetadataIndex", where)
            fqn, offset = at.field("fqn"), at.field("offset")
            if not isinstance(fqn, str):
                raise self.fail(f"{where}: a MetadataIndex without a key name")
            where = f"storage_data[{fqn!r}]"
            offsets = None if offset is None else self.ints(offset, where)
            stored = self.stub(info, "_StorageInfo", where)
            file, start, length = (stored.field(n) for n in ("relative_path", "offset", "length"))
            if stored.field("transform_descriptors"):
                raise UnsupportedObjectError(
                    f"{self.source}: {fqn}: stored through DCP stream extensions "
                    f"{stored.field('transform_descriptors')!r} (compression): statevault reads "
                    "only items FileSystemWriter stored as they are"
                )
            if not isinstance(file, str) or not _plain_name(file):
                raise self.fail(f"{where}: file name {file!r} is not a file of this directory")
            if type(start) is not int or type(length) is not int or start < 0 or length < 0:
                raise self.fail(f"{where}: offset {start!r} and length {length!r} must be >= 0")
            found[(fqn, offsets)] = StoredRange(file, start, length)
        return found

    def item(
        self,
        key: str,
        item: object,
        ranges: Mapping[tuple[str, tuple[int, ...] | None], StoredRange],
    ) -> DistcpTensor | DistcpBytes:
        if isinstance(item, _STUBS[(_METADATA_MODULE, "BytesStorageMetadata")]):
            return DistcpBytes(self.lookup(ranges, key, None))
        meta = self.stub(item, "TensorStorageMetadata", key)
        props = self.stub(meta.field("properties"), "TensorProperties", f"{key}.properties")
        state = props.state
        dtype = state[0] if isinstance(state, tuple) and state else props.field("dtype")
        if not isinstance(dtype, torch.dtype):
            raise self.fail(f"{key}: properties hold no torch dtype ({dtype!r:.80})")
        shape = self.ints(meta.field("size"), f"{key}.size")
        chunks = meta.field("chunks")
        if not isinstance(chunks, list):
            raise self.fail(f"{key}: chunks is not a list")
        decoded = []
        for number, chunk in enumerate(chunks):
            where = f"{key}.chunks[{number}]"
            stub = self.stub(chunk, "ChunkStorageMetadata", where)
            offsets = self.ints(stub.field("offsets"), f"{where}.offsets", length=len(shape))
            sizes = self.ints(stub.field("sizes"), f"{where}.sizes", length=len(shape))
            if any(o + s > d for o, s, d in zip(offsets, sizes, shape, strict=True)):
                raise self.fail(f"{where}: box {offsets} + {sizes} leaves the tensor's {shape}")
            decoded.append(DistcpChunk(offsets, sizes, self.lookup(ranges, key, offsets)))
        return DistcpTensor(dtype, shape, tuple(decoded))

    def lookup(
        self,
        ranges: Mapping[tuple[str, tuple[int, ...] | None], StoredRange],
        key: str,
        offsets: tuple[int, ...] | None,
    ) -> StoredRange:
        found = ranges.get((key, offsets))
        if found is None and offsets is None:
            found = ranges.get((key, ()))
        if found is None:
            at = "" if offsets is None else f" at offsets {offsets}"
            raise self.fail(f"{key}{at}: no storage_data entry says where it is stored")
        return found


_MODULE_OF: dict[str, str] = {"_StorageInfo": "torch.distributed.checkpoint.filesystem"}


def _plain_name(name: str) -> bool:
    """A file directly inside the checkpoint directory (no separators, not . or ..)."""
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name
