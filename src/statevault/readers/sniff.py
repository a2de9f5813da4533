"""What kind of file a path is, from its first bytes, and refusing what is no checkpoint.

Used to open each file with the reader it needs, and to say what a file *is* when an
entry point cannot read it, instead of calling a healthy file damaged. Opens nothing for
reading tensors. May be imported by the reader modules and ``tools``.
"""

from __future__ import annotations

import os
import zipfile
from enum import StrEnum
from pathlib import Path, PurePosixPath

from statevault.engine.storage import open_regular
from statevault.errors import (
    CheckpointKindError,
    CheckpointNotFoundError,
    NotACheckpointError,
    StateVaultError,
)
from statevault.fileformat.container import PREFIX_BYTES
from statevault.readers.weights_only import WeightsOnlyRefusal

TORCH_SUFFIXES = frozenset({".pt", ".pth", ".bin", ".ckpt", ".pkl"})
# what torch.save wrote first before 1.6: its magic number, pickled. After the protocol
# opcode (and, from protocol 4, a FRAME opcode with its 8-byte length) comes this LONG1.
LEGACY_TORCH_MAGIC = b"\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."
HEAD_BYTES = 32
INDEX_NAME = "model.safetensors.index.json"


class FileKind(StrEnum):
    """What a file's first bytes (and, for JSON, its name) say it is."""

    SAFETENSORS = "safetensors"
    TORCH = "torch"  # a zip archive, as torch.save writes from 1.6
    TORCH_LEGACY = "torch-legacy"  # as torch.save wrote before 1.6
    PICKLE = "pickle"  # any other pickle
    INDEX = "index"  # *.index.json
    JSON = "json"
    UNKNOWN = "unknown"


DESCRIPTIONS = {
    FileKind.TORCH: "a torch pickle (zip format), read with the weights-only loader",
    FileKind.TORCH_LEGACY: (
        "a torch pickle (legacy pre-1.6 format), read with the weights-only loader"
    ),
    FileKind.PICKLE: "a plain Python pickle, not a torch file (statevault never unpickles those)",
    FileKind.INDEX: "an index file of a sharded checkpoint",
    FileKind.JSON: "a JSON file, not a checkpoint",
}


def sniff(path: Path) -> FileKind:
    """The file's kind. The bytes decide; a name alone never makes a torch file (a damaged
    ``.pt`` is UNKNOWN). JSON needs a ``.json`` name and a JSON start.

    Raises OSError when the file cannot be read, CheckpointNotFoundError when it is not a
    regular file (a named pipe, a device: checked on the open descriptor).
    """
    fd, _ = open_regular(path)  # a named pipe would block a plain open() forever
    try:
        head = os.pread(fd, HEAD_BYTES, 0)
    finally:
        os.close(fd)
    return kind_of(head, path.name)


def kind_of(head: bytes, name: str) -> FileKind:
    """The kind of a file whose first ``HEAD_BYTES`` bytes are ``head`` and whose file name
    (the last part of a path or URL) is ``name``: :func:`sniff` without the reading."""
    suffix = PurePosixPath(name).suffix.lower()
    if head[PREFIX_BYTES : PREFIX_BYTES + 1] == b"{":
        return FileKind.SAFETENSORS
    if head.startswith(b"PK\x03\x04"):
        return FileKind.TORCH
    if head.startswith(b"\x80") and LEGACY_TORCH_MAGIC in head[2:HEAD_BYTES]:
        return FileKind.TORCH_LEGACY
    if head.startswith(b"\x80"):  # a pickle protocol opcode, without torch's magic number
        return FileKind.PICKLE
    if head.lstrip()[:1] in (b"{", b"[") and suffix == ".json":
        return FileKind.INDEX if name.lower().endswith(".index.json") else FileKind.JSON
    return FileKind.UNKNOWN


def describe(path: Path) -> str | None:
    """What ``path`` is, in words, when it is not a safetensors file (None otherwise)."""
    if path.is_dir():
        return "a directory (a sharded or Hugging Face checkpoint folder)"
    try:
        return DESCRIPTIONS.get(sniff(path))
    except OSError:
        return None


def checkpoint_file_kind(path: Path) -> FileKind:
    """SAFETENSORS, TORCH, TORCH_LEGACY or INDEX: which reader opens ``path``.

    Anything else is refused here with what it is: a plain pickle, a JSON file, an empty
    file, a zip without torch's ``data.pkl``. An unrecognised file named or sized like
    safetensors counts as a damaged one, so its parser names the damage.
    """
    try:
        kind = sniff(path)
    except StateVaultError:
        raise  # already says what is wrong (a pipe, no permission), in our words
    except OSError as exc:
        raise CheckpointNotFoundError(f"{path}: cannot read this file ({exc})") from exc
    if kind is FileKind.TORCH and not is_torch_zip(path):
        raise not_a_checkpoint(path, "a zip archive without the data.pkl of a torch file")
    if kind in (FileKind.SAFETENSORS, FileKind.TORCH, FileKind.TORCH_LEGACY, FileKind.INDEX):
        return kind
    if kind is FileKind.PICKLE:
        raise WeightsOnlyRefusal(
            f"{path}: is {DESCRIPTIONS[FileKind.PICKLE]}: unpickling can run arbitrary code "
            "hidden in the file. If you trust where it came from, load it yourself with "
            "pickle, keep only tensors, numpy arrays, dicts, lists and numbers, and "
            "statevault.save() that",
            reason=DESCRIPTIONS[FileKind.PICKLE],
        )
    if kind is FileKind.JSON:
        raise CheckpointKindError(
            f"{path}: is a JSON file, not a checkpoint (a shard index is named "
            f"*.index.json and has a 'weight_map', like {INDEX_NAME})"
        )
    size = path.stat().st_size
    if size == 0:
        raise not_a_checkpoint(path, "empty")
    if path.suffix.lower() in TORCH_SUFFIXES:
        raise NotACheckpointError(
            f"{path}: not a checkpoint: is named like a torch file but is neither a torch zip "
            "archive nor a legacy torch file (no magic number at its start); it is damaged, "
            "truncated or in another format"
        )
    if not _named_or_sized_like_safetensors(path, size):
        raise not_a_checkpoint(path, "neither safetensors nor torch")
    return FileKind.SAFETENSORS  # a damaged one: its parser says what is wrong


def _named_or_sized_like_safetensors(path: Path, size: int) -> bool:
    """Whether an unrecognised file is a damaged safetensors file rather than another format.

    Named ``*.safetensors``, or its first 8 bytes are a header length that fits in the file:
    then the safetensors parser names the damage (exit 1 in the CLI). A photo, a text file
    or an archive is "not a checkpoint" instead (exit 2), never "damaged".
    """
    if path.suffix.lower() == ".safetensors":
        return True
    fd, _ = open_regular(path)
    try:
        prefix = os.pread(fd, PREFIX_BYTES, 0)
    finally:
        os.close(fd)
    return len(prefix) == PREFIX_BYTES and int.from_bytes(prefix, "little") <= size - PREFIX_BYTES


def is_torch_zip(path: Path) -> bool:
    """Whether a zip archive holds a torch file's ``data.pkl``; True when unreadable (damaged)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("data.pkl") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return True  # a damaged torch file: its own reader names the damage


def not_a_checkpoint(path: Path | str, what: str) -> NotACheckpointError:
    return NotACheckpointError(
        f"{path}: not a checkpoint ({what}): a safetensors file starts with an 8-byte header "
        "length and a JSON header, a torch file is a zip archive or a pickle"
    )
