"""What an opened checkpoint was read from: one entry per file, with what became of it.

The typed vocabulary of ``Checkpoint.contents``: :class:`FolderEntry` rows, the kinds a
folder tells its files apart by (:class:`FolderFileKind`) and their fate
(:class:`EntryStatus`). Both are ``StrEnum``\\ s, so they print and serialise as the words
users see in ``inspect`` output. May be imported by anything in ``readers`` and above.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class CheckpointKind(StrEnum):
    """What an opened checkpoint is: one value per implementation of ``Checkpoint``."""

    STATEVAULT = "statevault"  # a safetensors file with statevault metadata
    SAFETENSORS = "safetensors"  # anyone else's safetensors file
    TORCH = "torch"  # torch.save's zip format (>= 1.6)
    TORCH_LEGACY = "torch-legacy"  # torch.save's format before 1.6
    SHARDED = "sharded"  # an index and its shards
    FOLDER = "folder"  # several kinds of state, read as {key: state}
    DCP = "dcp"  # a torch.distributed.checkpoint directory written by statevault.dcp
    DISTCP = "distcp"  # one written by DCP's own FileSystemWriter (.metadata + .distcp files)
    MEMORY = "memory"  # a state dict already in memory


class FolderFileKind(StrEnum):
    """How a folder classifies a file by its name, before opening it."""

    SAFETENSORS_INDEX = "safetensors index"
    SAFETENSORS = "safetensors"
    INDEX = "index"  # any other shard index (pytorch_model.bin.index.json)
    TORCH = "torch"
    JSON = "json"
    SHARD = "shard"  # named by an index: read as part of it
    OTHER = "other"  # not a checkpoint file, or a sub-folder

    @property
    def is_index(self) -> bool:
        return self in (FolderFileKind.SAFETENSORS_INDEX, FolderFileKind.INDEX)


class EntryStatus(StrEnum):
    """What became of one file of an opened checkpoint."""

    LOADED = "loaded"
    SHARD = "shard"  # read as part of the index named in the entry's note
    REFUSED = "not loadable without pickle"  # the weights-only loader refused it (note: why)
    SUPERSEDED = "superseded"  # another file holds the same key in a preferred format
    IGNORED = "ignored"  # not a checkpoint file, or not needed (the note says which)
    UNREAD = ""  # listed in an error message only: the folder could not be opened


@dataclass(frozen=True)
class FolderEntry:
    """One file of an opened checkpoint, and what became of it.

    ``key`` is where its state sits in what ``load`` returns (None when it is not read);
    ``note`` says why a file was refused, superseded or ignored.
    """

    file: str
    key: str | None
    kind: CheckpointKind | FolderFileKind
    status: EntryStatus
    note: str = ""


@dataclass(frozen=True)
class FolderListing:
    """Where a checkpoint opened from a folder sits in that folder's listing.

    Given to the reader's constructor, so a folder never edits a reader it opened: the
    reader adds its own row (its kind is known only once it is open) at ``position``
    among ``others``.
    """

    file: str
    key: str
    others: tuple[FolderEntry, ...]
    position: int = 0

    def entries(self, kind: CheckpointKind) -> tuple[FolderEntry, ...]:
        own = FolderEntry(self.file, self.key, kind, EntryStatus.LOADED)
        return (*self.others[: self.position], own, *self.others[self.position :])
