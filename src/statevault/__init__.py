"""statevault: safe, fast, crash-proof saving and loading of PyTorch state.

Files are plain safetensors files (no pickle); nested training state, tied weights, exact
dtypes and checksums are kept as JSON in the header's metadata.
"""

from __future__ import annotations

from statevault._build import build_model, materialize, skip_init
from statevault._checkpoint import Checkpoint, TensorInfo
from statevault._convert import ConvertReport, convert
from statevault._diagnose import Cause
from statevault._diff import DiffReport, TensorDelta, diff
from statevault._inspect import CheckpointSummary, inspect
from statevault._keymap import AppliedMapping
from statevault._load import load
from statevault._load_into import check, load_into, load_model
from statevault._open import open_checkpoint
from statevault._reader import FolderEntry, Reader, TensorMeta
from statevault._report import DtypeCast, LoadReport, ShapeMismatch, TiedKey
from statevault._save import save
from statevault._verify import BadTensor, VerifyReport, verify
from statevault.errors import (
    CheckpointKindError,
    CheckpointNotFoundError,
    CheckpointPermissionError,
    CheckpointWriteError,
    ChecksumMismatchError,
    CorruptFileError,
    DestinationExistsError,
    DeviceUnavailableError,
    HeaderError,
    KeyMappingError,
    MetaDeviceError,
    NotACheckpointError,
    StateDictMismatchError,
    StateVaultError,
    TruncatedFileError,
    UnsupportedObjectError,
)

__version__ = "0.1.0"

__all__ = [
    "AppliedMapping",
    "BadTensor",
    "Cause",
    "Checkpoint",
    "CheckpointKindError",
    "CheckpointNotFoundError",
    "CheckpointPermissionError",
    "CheckpointSummary",
    "CheckpointWriteError",
    "ChecksumMismatchError",
    "ConvertReport",
    "CorruptFileError",
    "DestinationExistsError",
    "DeviceUnavailableError",
    "DiffReport",
    "DtypeCast",
    "FolderEntry",
    "HeaderError",
    "KeyMappingError",
    "LoadReport",
    "MetaDeviceError",
    "NotACheckpointError",
    "Reader",
    "ShapeMismatch",
    "StateDictMismatchError",
    "StateVaultError",
    "TensorDelta",
    "TensorInfo",
    "TensorMeta",
    "TiedKey",
    "TruncatedFileError",
    "UnsupportedObjectError",
    "VerifyReport",
    "__version__",
    "build_model",
    "check",
    "convert",
    "diff",
    "inspect",
    "load",
    "load_into",
    "load_model",
    "materialize",
    "open_checkpoint",
    "save",
    "skip_init",
    "verify",
]
