"""What kind of file a path is, from its first bytes (the name only breaks ties).

Used to open each file with the reader it needs, and to say what a file *is* when an
entry point cannot read it, instead of calling a healthy file damaged.
"""

from __future__ import annotations

from pathlib import Path

from statevault._format import PREFIX_BYTES

TORCH_SUFFIXES = frozenset({".pt", ".pth", ".bin", ".ckpt", ".pkl"})

DESCRIPTIONS = {
    "torch": "a torch pickle (zip format), read with the weights-only loader",
    "torch-legacy": "a torch pickle (legacy pre-1.6 format), read with the weights-only loader",
    "index": "an index file of a sharded checkpoint",
    "json": "a JSON file, not a checkpoint",
}


def sniff(path: Path) -> str:
    """``"safetensors"``, ``"torch"`` (zip), ``"torch-legacy"`` (a pickle, as torch wrote
    before 1.6), ``"index"`` (``*.index.json``), ``"json"`` or ``"unknown"``.

    Raises OSError when the file cannot be read.
    """
    with path.open("rb") as handle:
        head = handle.read(PREFIX_BYTES + 1)
    if head[PREFIX_BYTES:] == b"{":
        return "safetensors"
    if head.startswith(b"PK\x03\x04"):
        return "torch"
    if head.startswith(b"\x80") or path.suffix.lower() in TORCH_SUFFIXES:
        return "torch-legacy"  # pickle protocol 2 opcode, as written before torch 1.6
    if path.name.lower().endswith(".index.json"):
        return "index"
    if path.suffix.lower() == ".json":
        return "json"
    return "unknown"


def describe(path: Path) -> str | None:
    """What ``path`` is, in words, when it is not a safetensors file (None otherwise)."""
    if path.is_dir():
        return "a directory (a sharded or Hugging Face checkpoint folder)"
    try:
        return DESCRIPTIONS.get(sniff(path))
    except OSError:
        return None
