"""statevault: safe, fast, crash-proof saving and loading of PyTorch state.

Files are plain safetensors files (no pickle); nested training state, tied weights, exact
dtypes and checksums are kept as JSON in the header's metadata.
"""

from __future__ import annotations

from statevault._checkpoint import Checkpoint, TensorInfo
from statevault._diagnose import Cause
from statevault._keymap import AppliedMapping
from statevault._load import load
from statevault._load_into import check, load_into
from statevault._report import DtypeCast, LoadReport, ShapeMismatch, TiedKey
from statevault._save import save
from statevault.errors import (
    CheckpointNotFoundError,
    ChecksumMismatchError,
    CorruptFileError,
    HeaderError,
    KeyMappingError,
    StateDictMismatchError,
    StateVaultError,
    TruncatedFileError,
    UnsupportedObjectError,
)

__version__ = "0.1.0"

__all__ = [
    "AppliedMapping",
    "Cause",
    "Checkpoint",
    "CheckpointNotFoundError",
    "ChecksumMismatchError",
    "CorruptFileError",
    "DtypeCast",
    "HeaderError",
    "KeyMappingError",
    "LoadReport",
    "ShapeMismatch",
    "StateDictMismatchError",
    "StateVaultError",
    "TensorInfo",
    "TiedKey",
    "TruncatedFileError",
    "UnsupportedObjectError",
    "__version__",
    "check",
    "load",
    "load_into",
    "save",
]
