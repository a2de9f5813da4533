"""Objects at a URL (``s3://bucket/prefix/name``) for the readers: names, small reads, kinds.

An object store has keys, not folders: a checkpoint "directory" is a prefix, and a name
inside it is the prefix, ``/`` and a plain file name (an index's shard names are checked to
be plain names first, so none escapes the prefix). Small JSON objects (an index) are read
whole with one request after their size is checked; a file's kind comes from its first
bytes, one small ranged read (``sniff.kind_of``), so that a torch pickle or a text file is
named for what it is before any header is parsed. Torch files are refused at a URL:
their reader needs a local file (the zip directory sits at its end, read in many small
pieces), so the message says to download it or convert it.

The shards a remote index names are opened here too, in parallel: each is a round trip.
May import: the engine's ``storage`` and ``tuning``, ``statevault.errors``, ``readers.base``,
``readers.sniff``, ``readers.safetensors_file``. Imported by ``readers.dispatch``,
``readers.sharded`` and ``readers.dcp_checkpoint``.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from statevault.engine import tuning
from statevault.engine.storage import Storage, StoredObject
from statevault.errors import CheckpointKindError, CheckpointNotFoundError, HeaderError
from statevault.readers.base import Checkpoint
from statevault.readers.safetensors_file import SafetensorsCheckpoint
from statevault.readers.sniff import DESCRIPTIONS, HEAD_BYTES, FileKind, kind_of


def joined(prefix: str, name: str) -> str:
    """``name`` (a plain file name) under the URL ``prefix``."""
    return f"{prefix.rstrip('/')}/{name}"


def parent(url: str) -> str:
    """The prefix holding the object ``url`` (its "directory")."""
    return url.rstrip("/").rsplit("/", 1)[0]


def base_name(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def read_small(storage: Storage, url: str, *, limit: int) -> bytes:
    """The whole of a small object (an index), refused before reading when over ``limit``."""
    with storage.open(url) as stored:
        if stored.size > limit:
            raise HeaderError(
                f"{url}: is {stored.size} bytes, above the {limit} byte limit for this kind "
                "of file; it is damaged or not what its name says"
            )
        return stored.read(stored.size, 0)


def sniff_object(
    storage: Storage, url: str, *, nbytes: int | None = None
) -> tuple[FileKind, StoredObject, bytes]:
    """The kind of the object ``url``, the object opened, and its first bytes: one ranged
    read of ``nbytes`` (``HEAD_GUESS_BYTES`` by default, so a safetensors file's header
    usually comes with the same request). The caller closes the object."""
    stored = storage.open(url)
    try:
        wanted = tuning.HEAD_GUESS_BYTES if nbytes is None else nbytes
        head = stored.read(min(stored.size, wanted), 0)
        kind = _readable_kind(head[:HEAD_BYTES], url)
    except BaseException:
        stored.close()
        raise
    return kind, stored, head


def remote_kind(storage: Storage, url: str) -> FileKind:
    """What the object ``url`` is, from its first bytes (one small ranged read)."""
    kind, stored, _ = sniff_object(storage, url, nbytes=HEAD_BYTES)
    stored.close()
    return kind


def _readable_kind(head: bytes, url: str) -> FileKind:
    """The kind ``head`` says, refusing what is never read from a URL."""
    kind = kind_of(head, base_name(url))
    if kind in (FileKind.TORCH, FileKind.TORCH_LEGACY, FileKind.PICKLE):
        raise CheckpointKindError(
            f"{url}: is {DESCRIPTIONS[kind]}; statevault reads torch files from local disk "
            "only (their zip directory is at the end, read in many small pieces). Download "
            "it first, or convert it once to safetensors (statevault convert) and read that"
        )
    if kind is FileKind.JSON:
        raise CheckpointKindError(
            f"{url}: is a JSON file, not a checkpoint (a shard index is named *.index.json "
            "and has a 'weight_map')"
        )
    return kind


def open_shards(
    storage: Storage, index: str, names: Sequence[str], *, into: dict[str, Checkpoint]
) -> None:
    """Open the shards ``names`` beside the index ``index`` (a URL) into ``into``, their
    headers fetched in parallel (each a round trip). Every shard opened is in ``into``
    even when another failed, so the caller's ``close`` releases it."""
    prefix = parent(index)

    def open_shard(name: str) -> SafetensorsCheckpoint:
        url = joined(prefix, name)
        try:
            if not name.endswith(".safetensors"):
                remote_kind(storage, url)  # a torch shard is refused, naming what it is
            return SafetensorsCheckpoint.from_file(url, storage=storage)
        except CheckpointNotFoundError as exc:
            raise CheckpointNotFoundError(
                f"{index}: names shard {name}, which is not under {prefix} ({exc})"
            ) from exc

    threads = max(1, min(len(names), tuning.REMOTE_THREADS))
    with ThreadPoolExecutor(threads, thread_name_prefix="statevault-open") as pool:
        futures = [pool.submit(open_shard, name) for name in names]
        try:
            for name, future in zip(names, futures, strict=True):
                into[name] = future.result()
        finally:
            for name, future in zip(names, futures, strict=True):
                done = not future.cancelled() and future.exception() is None
                if name not in into and done:
                    into[name] = future.result()
