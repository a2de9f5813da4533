"""statevault: safe, fast, crash-proof saving and loading of PyTorch state.

Files are plain safetensors files (no pickle); nested training state, tied weights, exact
dtypes and checksums are kept as JSON in the header's metadata.
"""

from __future__ import annotations

from statevault._checkpoint import Checkpoint, TensorInfo
from statevault._convert import ConvertReport, convert
from statevault._diff import DiffReport, TensorDelta, diff
from statevault._inspect import CheckpointSummary, inspect
from statevault._load import load
from statevault._load_into import load_into
from statevault._report import DtypeCast, LoadReport, ShapeMismatch
from statevault._save import save
from statevault._verify import BadTensor, VerifyReport, verify
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
    "BadTensor",
    "Checkpoint",
    "CheckpointNotFoundError",
    "CheckpointSummary",
    "ChecksumMismatchError",
    "ConvertReport",
    "CorruptFileError",
    "DiffReport",
    "DtypeCast",
    "HeaderError",
    "LoadReport",
    "ShapeMismatch",
    "StateDictMismatchError",
    "StateVaultError",
    "TensorDelta",
    "TensorInfo",
    "TruncatedFileError",
    "UnsupportedObjectError",
    "VerifyReport",
    "__version__",
    "convert",
    "diff",
    "inspect",
    "load",
    "load_into",
    "save",
    "verify",
]
