"""What kind of file a path is, from its first bytes.

Used to open each file with the reader it needs, and to say what a file *is* when an
entry point cannot read it, instead of calling a healthy file damaged.
"""

from __future__ import annotations

import os
from pathlib import Path

from statevault.engine.storage import open_regular
from statevault.fileformat.container import PREFIX_BYTES

TORCH_SUFFIXES = frozenset({".pt", ".pth", ".bin", ".ckpt", ".pkl"})
# what torch.save wrote first before 1.6: its magic number, pickled. After the protocol
# opcode (and, from protocol 4, a FRAME opcode with its 8-byte length) comes this LONG1.
LEGACY_TORCH_MAGIC = b"\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."
HEAD_BYTES = 32

DESCRIPTIONS = {
    "torch": "a torch pickle (zip format), read with the weights-only loader",
    "torch-legacy": "a torch pickle (legacy pre-1.6 format), read with the weights-only loader",
    "pickle": "a plain Python pickle, not a torch file (statevault never unpickles those)",
    "index": "an index file of a sharded checkpoint",
    "json": "a JSON file, not a checkpoint",
}


def sniff(path: Path) -> str:
    """``"safetensors"``, ``"torch"`` (zip), ``"torch-legacy"`` (as torch wrote before 1.6),
    ``"pickle"`` (any other pickle), ``"index"`` (``*.index.json``), ``"json"`` or
    ``"unknown"``.

    The bytes decide; a name alone never makes a torch file (a damaged ``.pt`` is
    ``"unknown"``). JSON needs a ``.json`` name and a JSON start.
    Raises OSError when the file cannot be read, CheckpointNotFoundError when it is not a
    regular file (a named pipe, a device: checked on the open descriptor).
    """
    fd, _ = open_regular(path)  # a named pipe would block a plain open() forever
    try:
        head = os.pread(fd, HEAD_BYTES, 0)
    finally:
        os.close(fd)
    if head[PREFIX_BYTES : PREFIX_BYTES + 1] == b"{":
        return "safetensors"
    if head.startswith(b"PK\x03\x04"):
        return "torch"
    if head.startswith(b"\x80") and LEGACY_TORCH_MAGIC in head[2:HEAD_BYTES]:
        return "torch-legacy"
    if head.startswith(b"\x80"):  # a pickle protocol opcode, without torch's magic number
        return "pickle"
    if head.lstrip()[:1] in (b"{", b"[") and path.suffix.lower() == ".json":
        return "index" if path.name.lower().endswith(".index.json") else "json"
    return "unknown"


def describe(path: Path) -> str | None:
    """What ``path`` is, in words, when it is not a safetensors file (None otherwise)."""
    if path.is_dir():
        return "a directory (a sharded or Hugging Face checkpoint folder)"
    try:
        return DESCRIPTIONS.get(sniff(path))
    except OSError:
        return None
