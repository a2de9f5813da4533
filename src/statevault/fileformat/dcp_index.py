"""The index of a distributed (DCP) checkpoint directory: JSON in, JSON out, no pickle.

A directory written by ``statevault.dcp.Writer`` holds one statevault file per rank that
had data and this index, written last (its commit is the checkpoint's commit). The index is
what DCP's pickled ``.metadata`` holds, in JSON a reader can trust: for every state-dict
key either a tensor (dtype name, global shape, and its chunks: offsets, sizes and where
each is stored as a file and a tensor name in that file) or a bytes item (a non-tensor
value, already serialised by DCP's planner, stored as a uint8 tensor). Pure: no I/O and no
``torch.distributed``, so ``readers`` opens these directories without it. Every value is
checked on decode (names of files cannot leave the directory; chunks lie inside their
tensor). May be imported by ``readers`` and by ``statevault.dcp``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from statevault.errors import HeaderError
from statevault.fileformat.metadata import reject_constant

INDEX_NAME = "statevault-dcp.json"
FORMAT_NAME = "statevault-dcp"
INDEX_VERSION = 1
MAX_INDEX_BYTES = 256 << 20  # a million chunks with long names; more is damage, not a checkpoint
# rank files: ``rank00003-<save id>.safetensors``; the save id keeps a new save's files
# from replacing the files the committed index still names.
RANK_FILE = re.compile(r"rank(\d{5})-([0-9a-f]{1,64})\.safetensors")


def rank_file_name(rank: int, save_id: str) -> str:
    """The file rank ``rank`` writes in the save ``save_id`` (lowercase hex)."""
    return f"rank{rank:05d}-{save_id}.safetensors"


@dataclass(frozen=True)
class Place:
    """Where stored bytes are: a rank file of the directory and a tensor name in it."""

    file: str
    key: str


@dataclass(frozen=True)
class Chunk:
    """One stored piece of a tensor: its box in the global tensor and where it is stored."""

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    place: Place

    @property
    def numel(self) -> int:
        count = 1
        for size in self.sizes:
            count *= size
        return count


@dataclass(frozen=True)
class TensorItem:
    """A tensor of the saved state: ``dtype`` is torch's name without ``torch.``."""

    dtype: str
    shape: tuple[int, ...]
    chunks: tuple[Chunk, ...]


@dataclass(frozen=True)
class BytesItem:
    """A non-tensor value, serialised by DCP's planner (a torch.save pickle by default)."""

    place: Place


Item = TensorItem | BytesItem


@dataclass(frozen=True)
class DcpIndex:
    """The whole index. ``planner_data`` is DCP's key -> path-in-the-state-dict mapping."""

    items: Mapping[str, Item]
    planner_data: Mapping[str, tuple[str | int, ...]] | None = None
    dcp_version: str | None = None
    save_id: str | None = None

    @property
    def files(self) -> list[str]:
        """Every rank file the index names, sorted."""
        named: set[str] = set()
        for item in self.items.values():
            if isinstance(item, BytesItem):
                named.add(item.place.file)
            else:
                named.update(chunk.place.file for chunk in item.chunks)
        return sorted(named)


def _place_json(place: Place) -> dict[str, str]:
    return {"file": place.file, "key": place.key}


def _item_json(item: Item) -> dict[str, Any]:
    if isinstance(item, BytesItem):
        return {"kind": "bytes", **_place_json(item.place)}
    return {
        "kind": "tensor",
        "dtype": item.dtype,
        "shape": list(item.shape),
        "chunks": [
            {"offsets": list(c.offsets), "sizes": list(c.sizes), **_place_json(c.place)}
            for c in item.chunks
        ],
    }


def encode(index: DcpIndex) -> bytes:
    """The index as UTF-8 JSON (keys in the state dict's order, as DCP planned them)."""
    document = {
        "format": FORMAT_NAME,
        "version": INDEX_VERSION,
        "dcp_version": index.dcp_version,
        "save_id": index.save_id,
        "planner_data": None
        if index.planner_data is None
        else {key: list(path) for key, path in index.planner_data.items()},
        "items": {fqn: _item_json(item) for fqn, item in index.items.items()},
    }
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class _Decoder:
    """Checks each value of a parsed index; every error names the index and the key."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, problem: str) -> HeaderError:
        return HeaderError(
            f"{self.source}: {where}: {problem}; the checkpoint index is damaged or was not "
            "written by statevault.dcp (save the checkpoint again)"
        )

    def ints(self, value: Any, where: str) -> tuple[int, ...]:
        if not isinstance(value, list) or not all(type(v) is int and v >= 0 for v in value):
            raise self.fail(where, "expected a list of non-negative integers")
        return tuple(value)

    def text(self, value: Any, where: str) -> str:
        if not isinstance(value, str):
            raise self.fail(where, f"expected a string, got {type(value).__name__}")
        return value

    def place(self, raw: Mapping[str, Any], where: str) -> Place:
        file = self.text(raw.get("file"), f"{where}.file")
        if RANK_FILE.fullmatch(file) is None:  # also keeps names inside the directory
            raise self.fail(f"{where}.file", f"{file!r} is not a rank file name")
        return Place(file, self.text(raw.get("key"), f"{where}.key"))

    def chunk(self, raw: Any, shape: tuple[int, ...], where: str) -> Chunk:
        if not isinstance(raw, dict):
            raise self.fail(where, "expected an object")
        offsets = self.ints(raw.get("offsets"), f"{where}.offsets")
        sizes = self.ints(raw.get("sizes"), f"{where}.sizes")
        if len(offsets) != len(shape) or len(sizes) != len(shape):
            raise self.fail(where, f"offsets/sizes do not have the tensor's {len(shape)} dims")
        if any(o + s > d for o, s, d in zip(offsets, sizes, shape, strict=True)):
            raise self.fail(where, f"the chunk {offsets}+{sizes} lies outside the shape {shape}")
        return Chunk(offsets, sizes, self.place(raw, where))

    def item(self, fqn: str, raw: Any) -> Item:
        where = f"items[{fqn!r}]"
        if not isinstance(raw, dict):
            raise self.fail(where, "expected an object")
        kind = raw.get("kind")
        if kind == "bytes":
            return BytesItem(self.place(raw, where))
        if kind != "tensor":
            raise self.fail(f"{where}.kind", f"unknown kind {kind!r} (tensor or bytes)")
        shape = self.ints(raw.get("shape"), f"{where}.shape")
        chunks = raw.get("chunks")
        if not isinstance(chunks, list):
            raise self.fail(f"{where}.chunks", "expected a list")
        decoded = tuple(self.chunk(c, shape, f"{where}.chunks[{n}]") for n, c in enumerate(chunks))
        return TensorItem(self.text(raw.get("dtype"), f"{where}.dtype"), shape, decoded)

    def planner_data(self, raw: Any) -> dict[str, tuple[str | int, ...]] | None:
        if raw is None:
            return None
        if not isinstance(raw, dict):
            raise self.fail("planner_data", "expected an object or null")
        decoded: dict[str, tuple[str | int, ...]] = {}
        for key, path in raw.items():
            if not isinstance(path, list) or not all(type(p) in (str, int) for p in path):
                raise self.fail(f"planner_data[{key!r}]", "expected a list of keys")
            decoded[key] = tuple(path)
        return decoded


def decode(raw: bytes, *, source: str) -> DcpIndex:
    """Parse and check an index read from ``source`` (named in every error)."""
    check = _Decoder(source)
    try:
        document = json.loads(raw.decode("utf-8"), parse_constant=reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise check.fail("index", f"not valid UTF-8 JSON ({exc})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT_NAME:
        raise check.fail("format", f"not a {FORMAT_NAME} index")
    version = document.get("version")
    if type(version) is not int or not 1 <= version <= INDEX_VERSION:
        raise HeaderError(
            f"{source}: index version {version!r}; this statevault reads version "
            f"{INDEX_VERSION} (upgrade statevault if the checkpoint is newer)"
        )
    items = document.get("items")
    if not isinstance(items, dict):
        raise check.fail("items", "expected an object")
    dcp_version, save_id = document.get("dcp_version"), document.get("save_id")
    return DcpIndex(
        items={fqn: check.item(fqn, item) for fqn, item in items.items()},
        planner_data=check.planner_data(document.get("planner_data")),
        dcp_version=None if dcp_version is None else check.text(dcp_version, "dcp_version"),
        save_id=None if save_id is None else check.text(save_id, "save_id"),
    )
