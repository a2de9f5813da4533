"""statevault: safe, fast, crash-proof saving and loading of PyTorch state.

Files are plain safetensors files (no pickle); nested training state, tied weights, exact
dtypes and checksums are kept as JSON in the header's metadata.
"""

from __future__ import annotations

from statevault._build import load_model, materialize, skip_init
from statevault._checkpoint import Checkpoint, TensorInfo
from statevault._load import load
from statevault._load_into import load_into
from statevault._report import DtypeCast, LoadReport, ShapeMismatch
from statevault._save import save
from statevault.errors import (
    CheckpointNotFoundError,
    ChecksumMismatchError,
    CorruptFileError,
    HeaderError,
    StateDictMismatchError,
    StateVaultError,
    TruncatedFileError,
    UnsupportedObjectError,
)

__version__ = "0.1.0"

__all__ = [
    "Checkpoint",
    "CheckpointNotFoundError",
    "ChecksumMismatchError",
    "CorruptFileError",
    "DtypeCast",
    "HeaderError",
    "LoadReport",
    "ShapeMismatch",
    "StateDictMismatchError",
    "StateVaultError",
    "TensorInfo",
    "TruncatedFileError",
    "UnsupportedObjectError",
    "__version__",
    "load",
    "load_into",
    "load_model",
    "materialize",
    "save",
    "skip_init",
]
