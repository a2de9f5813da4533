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
from statevault.loading.build import build_model, materialize
from statevault.loading.load import load
from statevault.loading.load_into import check, load_into, load_model
from statevault.loading.meta_init import skip_init
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
from statevault.reports.stats_report import Flag, Histogram, StatsReport, TensorStats
from statevault.saving.save import save
from statevault.tools.conversion import ConvertReport, convert
from statevault.tools.diff_report import DiffReport, TensorDelta
from statevault.tools.diffing import diff
from statevault.tools.inspection import CheckpointSummary, ModuleNode, inspect
from statevault.tools.report_page import html_report
from statevault.tools.tensor_stats import stats
from statevault.tools.verification import BadTensor, VerifyReport, verify

__version__ = "0.1.0"

__all__ = [
    "AnyOf",
    "AppliedMapping",
    "BadTensor",
    "Cause",
    "CauseKind",
    "Checkpoint",
    "CheckpointKind",
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
    "EntryStatus",
    "Flag",
    "FolderEntry",
    "FolderFileKind",
    "HeaderError",
    "Histogram",
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
    "ModuleNode",
    "NotACheckpointError",
    "PreemptionHandler",
    "Progress",
    "Restored",
    "RetentionPlan",
    "RetentionPolicy",
    "ShapeMismatch",
    "StateDictMismatchError",
    "StateVaultError",
    "StatsReport",
    "StepExistsError",
    "StepInfo",
    "StepNotFoundError",
    "StepRecord",
    "TensorDelta",
    "TensorInfo",
    "TensorSlice",
    "TensorStats",
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
    "html_report",
    "inspect",
    "load",
    "load_into",
    "load_model",
    "materialize",
    "save",
    "shown",
    "skip_init",
    "stats",
    "verify",
]
