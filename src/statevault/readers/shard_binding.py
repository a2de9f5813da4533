"""What ties a statevault shard set together, checked on open, and an unfinished commit's view.

A sharded save records each shard's header digest in its index (``fileformat.shards``);
opening checks every shard against it, so a stale, swapped or foreign shard is named
instead of silently mixing two saves. While a sharded save's commit is under way, or after
one was killed mid-commit, the journal (``engine.commit``) says which temporaries already
are the new set: readers follow it without writing anything.

May be imported by ``readers.sharded``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from statevault.engine import commit as _commit
from statevault.errors import HeaderError
from statevault.fileformat.metadata import reject_constant
from statevault.fileformat.shards import Binding, base_name, decode_binding
from statevault.fileformat.tree import Skeleton
from statevault.readers.base import Checkpoint

OPEN_ATTEMPTS = 3  # a reader racing a commit sees the old set, then the new: never a third


class StaleShardError(HeaderError):
    """A shard is not the one its index was written with (internal: retried, then raised)."""


def committed_paths(index: Path) -> dict[str, Path]:
    """Final name -> the committed temporary standing for it (empty outside a commit)."""
    return _commit.pending(index.parent, base_name(index.name))


def check_binding(
    index: Path | str, binding: Binding | None, shards: Mapping[str, Checkpoint]
) -> None:
    """Refuse a shard whose header digest is not the one the index recorded for it."""
    if binding is None:
        return  # an index of another writer: nothing binds its shards
    problems = []
    for name, shard in shards.items():
        recorded = binding.header_digests.get(name)
        vault = getattr(shard, "vault", None)
        actual = None if vault is None else vault.header_digest
        if recorded is None:
            problems.append(f"{name} is not one of the shards this index was written with")
        elif actual != recorded:
            problems.append(
                f"{name} is not the shard this index was written with (header digest "
                f"{actual or 'none'}, the index records {recorded}): a stale or swapped shard"
            )
    for name in sorted(set(binding.header_digests) - set(shards)):
        problems.append(f"{name} was written with this index but holds none of its tensors")
    if problems:
        shown = "; ".join(problems[:5]) + (
            f"; ... and {len(problems) - 5} more" * (len(problems) > 5)
        )
        raise StaleShardError(
            f"{index}: {shown}. The shards come from different saves; restore the set "
            "that was saved together, or save it again"
        )


def binding_of(index: Path | str, metadata: Mapping[str, str]) -> Binding | None:
    return decode_binding(metadata, source=str(index))


def parse_tree(index: Path | str, binding: Binding | None) -> Skeleton | None:
    """The skeleton a statevault index carries (None for other indexes)."""
    if binding is None or binding.tree_text is None:
        return None
    try:
        return json.loads(binding.tree_text, parse_constant=reject_constant)
    except (ValueError, RecursionError) as exc:
        raise HeaderError(
            f"{index}: statevault tree is not valid JSON or is nested too deeply "
            f"({type(exc).__name__}); the index is damaged"
        ) from None
