"""statevault: safe, fast, crash-proof saving and loading of PyTorch state.

Files are plain safetensors files (no pickle); nested training state, tied weights, exact
dtypes and checksums are kept as JSON in the header's metadata.
"""

from __future__ import annotations

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
    ManagerLockedError,
    MetaDeviceError,
    NotACheckpointError,
    StateDictMismatchError,
    StateVaultError,
    StepExistsError,
    StepNotFoundError,
    TruncatedFileError,
    UnsupportedObjectError,
)
from statevault.loading.build import build_model, materialize, skip_init
from statevault.loading.diagnose import Cause
from statevault.loading.keymap import AppliedMapping
from statevault.loading.load import load
from statevault.loading.load_into import check, load_into, load_model
from statevault.manager.manager import CheckpointManager
from statevault.manager.policies import (
    AnyOf,
    KeepBest,
    KeepEveryInterval,
    KeepEveryNSteps,
    KeepLatest,
    KeepPinned,
    RetentionPlan,
    RetentionPolicy,
    StepRecord,
)
from statevault.manager.preemption import PreemptionHandler
from statevault.manager.steps import Restored, StepInfo
from statevault.readers.base import FolderEntry, Reader, TensorMeta
from statevault.readers.dispatch import open_checkpoint
from statevault.readers.safetensors_file import Checkpoint, TensorInfo
from statevault.reports.load_report import DtypeCast, LoadReport, ShapeMismatch, TiedKey
from statevault.saving.save import save
from statevault.tools.conversion import ConvertReport, convert
from statevault.tools.diffing import DiffReport, TensorDelta, diff
from statevault.tools.inspection import CheckpointSummary, inspect
from statevault.tools.verification import BadTensor, VerifyReport, verify

__version__ = "0.1.0"

__all__ = [
    "AnyOf",
    "AppliedMapping",
    "BadTensor",
    "Cause",
    "Checkpoint",
    "CheckpointKindError",
    "CheckpointManager",
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
    "InvalidArgumentError",
    "KeepBest",
    "KeepEveryInterval",
    "KeepEveryNSteps",
    "KeepLatest",
    "KeepPinned",
    "KeyMappingError",
    "LoadReport",
    "ManagerLockedError",
    "MetaDeviceError",
    "NotACheckpointError",
    "PreemptionHandler",
    "Reader",
    "Restored",
    "RetentionPlan",
    "RetentionPolicy",
    "ShapeMismatch",
    "StateDictMismatchError",
    "StateVaultError",
    "StepExistsError",
    "StepInfo",
    "StepNotFoundError",
    "StepRecord",
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
