"""statevault: safe, fast, crash-proof saving and loading of PyTorch state.

Files are plain safetensors files (no pickle); nested training state, tied weights, exact
dtypes and checksums are kept as JSON in the header's metadata.
"""

from __future__ import annotations

from statevault.engine.progress import Progress
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
    InvalidArgumentError,
    KeyMappingError,
    MetaDeviceError,
    NotACheckpointError,
    StateDictMismatchError,
    StateVaultError,
    TruncatedFileError,
    UnsupportedObjectError,
)
from statevault.loading.build import build_model, materialize
from statevault.loading.load import load
from statevault.loading.load_into import check, load_into, load_model
from statevault.loading.meta_init import skip_init
from statevault.readers.base import Checkpoint, TensorInfo
from statevault.readers.listing import CheckpointKind, EntryStatus, FolderEntry, FolderFileKind
from statevault.readers.slices import TensorSlice
from statevault.reports.display import shown
from statevault.reports.load_entries import (
    AppliedMapping,
    Cause,
    CauseKind,
    DtypeCast,
    ShapeMismatch,
    TiedKey,
    TieStatus,
)
from statevault.reports.load_report import LoadReport
from statevault.saving.save import save
from statevault.tools.conversion import ConvertReport, convert
from statevault.tools.diff_report import DiffReport, TensorDelta
from statevault.tools.diffing import diff
from statevault.tools.inspection import CheckpointSummary, ModuleNode, inspect
from statevault.tools.verification import BadTensor, VerifyReport, verify

__version__ = "0.1.0"

__all__ = [
    "AppliedMapping",
    "BadTensor",
    "Cause",
    "CauseKind",
    "Checkpoint",
    "CheckpointKind",
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
    "EntryStatus",
    "FolderEntry",
    "FolderFileKind",
    "HeaderError",
    "InvalidArgumentError",
    "KeyMappingError",
    "LoadReport",
    "MetaDeviceError",
    "ModuleNode",
    "NotACheckpointError",
    "Progress",
    "ShapeMismatch",
    "StateDictMismatchError",
    "StateVaultError",
    "TensorDelta",
    "TensorInfo",
    "TensorSlice",
    "TieStatus",
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
    "save",
    "shown",
    "skip_init",
    "verify",
]
