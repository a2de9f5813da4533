"""save(..., max_shard_size=...): nested state -> Hugging Face shards + index, committed as a whole.

The layout and names are HF's (``fileformat.shards``); each shard is a complete statevault
file with its own checksums, written in parallel straight from tensor memory to a
temporary name, and the set replaces the previous one through ``engine.commit``'s journal:
a reader or a kill at any moment sees the old complete set or the new one. Afterwards no
file of the old set is left (only names matching this base's shard pattern, the index and
the one-file form are ever removed). When one shard suffices, the one file is written,
exactly as ``save`` writes it.

May import: engine, fileformat, errors, ``saving.save``. Imported by: ``saving.save``.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from statevault.engine import commit as _commit
from statevault.engine import target as _target
from statevault.engine import temps
from statevault.engine.progress import Progress
from statevault.engine.storage import LOCAL_STORAGE
from statevault.engine.tuning import MAX_THREADS
from statevault.engine.writer import Source, write_contents
from statevault.errors import StateVaultError
from statevault.fileformat import metadata as _vault
from statevault.fileformat import shards as _shards
from statevault.fileformat.checksums import DIGEST_CHARS, canonical_json
from statevault.fileformat.container import PREFIX_BYTES, plan_layout
from statevault.fileformat.dtypes import DtypeSpec
from statevault.fileformat.table import TensorEntry
from statevault.fileformat.tree import Skeleton
from statevault.saving.save import _cpu_bytes_source, _stored_shape

Stored = list[tuple[str, torch.Tensor, DtypeSpec]]
FilePlan = tuple[list[TensorEntry], list[Source], _vault.SlottedHeader]


def _storage_key(tensor: torch.Tensor) -> Hashable | None:
    """Equal for tensors viewing one storage (they must share a shard); None when empty."""
    if tensor.numel() == 0 or tensor.is_meta:
        return None
    return (tensor.device, tensor.untyped_storage().data_ptr())


def _file_plan(
    stored: Stored, members: Mapping[str, str], user: Mapping[str, str], checksum: bool
) -> FilePlan:
    """What one file (a shard, or the one file) writes, in file order, and its header."""
    entries = plan_layout(
        (name, spec.code, tuple(_stored_shape(tensor, spec)), tensor.nbytes)
        for name, tensor, spec in stored
    )
    by_name = {name: tensor for name, tensor, _ in stored}
    sources = [_cpu_bytes_source(by_name[entry.name]) for entry in entries]
    return entries, sources, _vault.SlottedHeader(members, entries, user, checksum)


def _members(stored: Stored, aliases: Mapping[str, str], tree: Skeleton | None) -> dict[str, str]:
    dtypes = {name: spec.name for name, _, spec in stored if spec.encoded}
    info = _vault.VaultInfo(
        version=_vault.FORMAT_VERSION,
        tree=tree,
        has_tree=tree is not None,
        aliases=dict(aliases),
        dtypes=dtypes,
    )
    return _vault.encoded_members(info)


def _write_temporary(
    directory: Path,
    final: str,
    plan: FilePlan,
    *,
    checksum: bool,
    fsync: bool,
    progress: Progress | None,
    written: list[Path],
) -> tuple[Path, str]:
    """Write one file under a fresh temporary name (recorded in ``written``): that name
    and the file's header digest. The journal's commit renames it, not the storage's."""
    pending = LOCAL_STORAGE.begin(directory / final)
    try:
        entries, sources, header = plan
        complete = write_contents(
            pending, entries, sources, header, checksum=checksum, progress=progress
        )
        path = pending.stage(durable=fsync)
    except BaseException:
        pending.abort()
        raise
    written.append(path)
    lead = PREFIX_BYTES + len(_vault.LEAD)  # the header digest's fixed place
    return path, bytes(complete[lead : lead + DIGEST_CHARS]).decode("ascii")


def _write_bytes(path: Path, data: bytes, *, fsync: bool, written: list[Path]) -> None:
    with open(path, "xb") as handle:
        written.append(path)
        handle.write(data)
        if fsync:
            handle.flush()
            os.fsync(handle.fileno())


def _superseded(directory: Path, name: str, keep: set[str]) -> list[str]:
    """This base's files of an earlier save that the new set does not contain.

    Only names matching its exact shard pattern, its index and its one-file name: a
    ``model.safetensors.backup`` or another model's shards are never touched. The index
    comes first, so a kill during removals leaves it with all its shards or gone.
    """
    pattern = _shards.shard_pattern(name)
    index = _shards.index_name(name)
    found: list[str] = []
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.name in keep or entry.is_dir(follow_symlinks=False):
                continue
            if entry.name == index:
                found.insert(0, entry.name)
            elif entry.name == name or pattern.match(entry.name):
                found.append(entry.name)
    return found


def encode_shard_index(
    names: Sequence[str],
    parts: Sequence[Stored],
    stored: Stored,
    digests: Sequence[str],
    aliases: Mapping[str, str],
    tree: Skeleton | None,
    user: Mapping[str, str],
) -> bytes:
    """The index of a sharded save: which shard holds each tensor, and each shard's digest."""
    weight_map = {
        stored_name: final
        for final, part in zip(names, parts, strict=True)
        for stored_name, _, _ in part
    }
    return _shards.encode_index(
        weight_map,
        total_size=sum(tensor.nbytes for _, tensor, _ in stored),
        header_digests=dict(zip(names, digests, strict=True)),
        aliases=aliases,
        tree=canonical_json(tree),
        user=user,
    )


def save_sharded(
    stored: Stored,
    aliases: Mapping[str, str],
    tree: Skeleton,
    destination: str | os.PathLike[str],
    *,
    max_shard_size: int | str,
    user: Mapping[str, str],
    checksum: bool,
    fsync: bool,
    progress: Progress | None,
) -> None:
    """Write ``stored`` (with ``aliases`` not stored, and the ``tree``) as shards of
    ``destination``, or as that one file when one shard suffices; see the module docstring.
    """
    limit = _shards.parse_size(max_shard_size)
    given = os.fspath(destination)
    _target.resolve(given)  # the same refusals as a one-file save, before anything is written
    directory, name = Path(given).parent, Path(given).name
    groups = _shards.plan_shards(
        [tensor.nbytes for _, tensor, _ in stored],
        [_storage_key(tensor) for _, tensor, _ in stored],
        limit,
    )
    written: list[Path] = []
    try:
        _commit.roll_forward(directory, name, fsync=fsync)  # a killed save's set goes first
        temps.remove_stale_temporaries(directory)
        if progress is not None:
            progress.start(sum(tensor.nbytes for _, tensor, _ in stored))
        if len(groups) <= 1:
            plan = _file_plan(stored, _members(stored, aliases, tree), user, checksum)
            path, _ = _write_temporary(
                directory,
                name,
                plan,
                checksum=checksum,
                fsync=fsync,
                progress=progress,
                written=written,
            )
            renames = [(path, name)]
        else:
            renames = _write_shards(
                directory,
                name,
                stored,
                groups,
                aliases,
                tree,
                user,
                written,
                checksum=checksum,
                fsync=fsync,
                progress=progress,
            )
        removals = _superseded(directory, name, {final for _, final in renames})
        journal = directory / temps.temp_name(f"{name}{_commit.JOURNAL_SUFFIX}")
        written.append(journal)
        _commit.commit(directory, name, renames, removals, temporary=journal, fsync=fsync)
    except BaseException as exc:
        if not _commit.journal_path(directory, name).exists():  # not committed: undo
            for path in written:
                path.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno and not isinstance(exc, StateVaultError):
            raise _target.write_error(given, exc, directory) from exc
        raise


def _write_shards(
    directory: Path,
    name: str,
    stored: Stored,
    groups: Sequence[Sequence[int]],
    aliases: Mapping[str, str],
    tree: Skeleton,
    user: Mapping[str, str],
    written: list[Path],
    *,
    checksum: bool,
    fsync: bool,
    progress: Progress | None,
) -> list[tuple[Path, str]]:
    """Write every shard (in parallel) and the index to temporaries; the renames to commit."""
    names = _shards.shard_names(name, len(groups))
    parts = [[stored[i] for i in group] for group in groups]
    plans = [_file_plan(part, _members(part, {}, None), user, checksum) for part in parts]
    workers = max(1, min(len(plans), os.cpu_count() or 1, MAX_THREADS))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="statevault-shard") as pool:
        futures = [
            pool.submit(
                _write_temporary,
                directory,
                final,
                plan,
                checksum=checksum,
                fsync=fsync,
                progress=progress,
                written=written,
            )
            for final, plan in zip(names, plans, strict=True)
        ]
        results = [future.result() for future in futures]
    digests = [digest for _, digest in results]
    index = encode_shard_index(names, parts, stored, digests, aliases, tree, user)
    index_final = _shards.index_name(name)
    index_temp = directory / temps.temp_name(index_final)
    _write_bytes(index_temp, index, fsync=fsync, written=written)
    shard_renames = [(path, final) for final, (path, _) in zip(names, results, strict=True)]
    return [*shard_renames, (index_temp, index_final)]
