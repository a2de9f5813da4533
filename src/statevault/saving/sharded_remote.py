"""save(..., max_shard_size=...) to a URL: shards uploaded in parallel, the index committed last.

An object store has no rename, so the local journal (``saving.sharded``) cannot apply. The
index is the commit marker instead: readers open a sharded checkpoint through its index
(``readers.dispatch``), so until the new index's upload completes there is no new
checkpoint to see, and once it completes every shard it names is whole (each shard is an
upload that appears whole or not at all, and its header digest is in the index, so a
shard of another save is named, never mixed in). Shard names are Hugging Face's and fixed,
so replacing a sharded checkpoint in place cannot keep the old one readable meanwhile:
the old index is removed first (the old set stops being a checkpoint before any of its
shards is replaced, rather than becoming a mix), and shards of the old set the new one
does not reuse are removed after the new index is committed. To keep the previous
checkpoint while the next is written, save each step under its own prefix.

May import: engine, fileformat, errors, ``saving.save`` and ``saving.sharded``. Imported
by ``saving.save``.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

from statevault.engine import tuning
from statevault.engine.progress import Progress
from statevault.engine.storage import Storage
from statevault.engine.writer import write_atomically, write_contents
from statevault.fileformat import metadata as _vault
from statevault.fileformat import shards as _shards
from statevault.fileformat.checksums import DIGEST_CHARS
from statevault.fileformat.container import PREFIX_BYTES
from statevault.fileformat.tree import Skeleton
from statevault.saving.sharded import (
    FilePlan,
    Stored,
    _file_plan,
    _members,
    _storage_key,
    encode_shard_index,
)


def _upload(
    storage: Storage, url: str, plan: FilePlan, *, checksum: bool, progress: Progress | None
) -> str:
    """Upload one shard (whole or not at all); its header digest, for the index."""
    entries, sources, header = plan
    pending = storage.begin(url)
    try:
        complete = write_contents(
            pending, entries, sources, header, checksum=checksum, progress=progress
        )
        pending.commit(durable=True)
    except BaseException:
        pending.abort()
        raise
    lead = PREFIX_BYTES + len(_vault.LEAD)  # the header digest's fixed place
    return bytes(complete[lead : lead + DIGEST_CHARS]).decode("ascii")


def _superseded(storage: Storage, prefix: str, name: str, keep: set[str]) -> list[str]:
    """This base's objects under ``prefix`` (its shards, index, one file) not in ``keep``."""
    pattern = _shards.shard_pattern(name)
    index = _shards.index_name(name)
    return [
        found
        for found in storage.list_names(prefix)
        if found not in keep and (found in (name, index) or pattern.match(found))
    ]


def save_sharded_remote(
    stored: Stored,
    aliases: Mapping[str, str],
    tree: Skeleton,
    destination: str,
    storage: Storage,
    *,
    max_shard_size: int | str,
    user: Mapping[str, str],
    checksum: bool,
    progress: Progress | None,
) -> None:
    """Write ``stored`` as shards of the URL ``destination`` and their index, the index
    last (or as that one object when one shard suffices); see the module docstring."""
    limit = _shards.parse_size(max_shard_size)
    prefix, _, name = destination.rstrip("/").rpartition("/")
    groups = _shards.plan_shards(
        [tensor.nbytes for _, tensor, _ in stored],
        [_storage_key(tensor) for _, tensor, _ in stored],
        limit,
    )
    index_url = f"{prefix}/{_shards.index_name(name)}"
    storage.remove(index_url)  # the old set stops being a checkpoint before it is replaced
    if len(groups) <= 1:
        entries, sources, header = _file_plan(
            stored, _members(stored, aliases, tree), user, checksum
        )
        write_atomically(
            storage,
            destination,
            entries,
            sources,
            header,
            checksum=checksum,
            fsync=True,
            progress=progress,
        )
        kept = {name}
    else:
        kept = _upload_shards(
            stored, groups, aliases, tree, prefix, name, storage, user, checksum, progress
        )
    for old in _superseded(storage, prefix, name, kept):
        storage.remove(f"{prefix}/{old}")


def _upload_shards(
    stored: Stored,
    groups: list[list[int]],
    aliases: Mapping[str, str],
    tree: Skeleton,
    prefix: str,
    name: str,
    storage: Storage,
    user: Mapping[str, str],
    checksum: bool,
    progress: Progress | None,
) -> set[str]:
    """Upload every shard in parallel, then the index (the commit); the names written."""
    if progress is not None:
        progress.start(sum(tensor.nbytes for _, tensor, _ in stored))
    names = _shards.shard_names(name, len(groups))
    parts = [[stored[i] for i in group] for group in groups]
    plans = [_file_plan(part, _members(part, {}, None), user, checksum) for part in parts]
    workers = max(1, min(len(plans), tuning.REMOTE_THREADS))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="statevault-upload") as pool:
        futures = [
            pool.submit(
                _upload, storage, f"{prefix}/{final}", plan, checksum=checksum, progress=progress
            )
            for final, plan in zip(names, plans, strict=True)
        ]
        digests = [future.result() for future in futures]
    index = encode_shard_index(names, parts, stored, digests, aliases, tree, user)
    index_name = _shards.index_name(name)
    pending = storage.begin(f"{prefix}/{index_name}")
    try:
        pending.write(0, [memoryview(index)])
        pending.commit(durable=True)  # the commit: from here the new set is the checkpoint
    except BaseException:
        pending.abort()
        raise
    return {*names, index_name}
