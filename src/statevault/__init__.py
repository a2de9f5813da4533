"""statevault: safe, fast, crash-proof saving and loading of PyTorch state.

Files are plain safetensors files (no pickle); nested training state, tied weights, exact
dtypes and checksums are kept as JSON in the header's metadata.

Importing the package imports none of its parts: each public name is loaded from its module on
first use (PEP 562), so a script or CLI call pays only for what it touches.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from statevault.engine.progress import Progress
    from statevault.errors import (
        CheckpointKindError,
        CheckpointNotFoundError,
        CheckpointPermissionError,
        CheckpointReadError,
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

# each public name -> the module that defines it; read by __getattr__ on first use
_PUBLIC_MODULES: dict[str, str] = {
    "AnyOf": "statevault.manager.policies",
    "AppliedMapping": "statevault.reports.load_entries",
    "BadTensor": "statevault.tools.verification",
    "Cause": "statevault.reports.load_entries",
    "CauseKind": "statevault.reports.load_entries",
    "Checkpoint": "statevault.readers.base",
    "CheckpointKind": "statevault.readers.listing",
    "CheckpointKindError": "statevault.errors",
    "CheckpointManager": "statevault.manager.manager",
    "CheckpointNotFoundError": "statevault.errors",
    "CheckpointPermissionError": "statevault.errors",
    "CheckpointSummary": "statevault.tools.inspection",
    "CheckpointReadError": "statevault.errors",
    "CheckpointWriteError": "statevault.errors",
    "ChecksumMismatchError": "statevault.errors",
    "ConvertReport": "statevault.tools.conversion",
    "CorruptFileError": "statevault.errors",
    "DestinationExistsError": "statevault.errors",
    "DeviceUnavailableError": "statevault.errors",
    "DiffReport": "statevault.tools.diff_report",
    "DtypeCast": "statevault.reports.load_entries",
    "EntryStatus": "statevault.readers.listing",
    "Flag": "statevault.reports.stats_report",
    "FolderEntry": "statevault.readers.listing",
    "FolderFileKind": "statevault.readers.listing",
    "HeaderError": "statevault.errors",
    "Histogram": "statevault.reports.stats_report",
    "InvalidArgumentError": "statevault.errors",
    "KeepBest": "statevault.manager.policies",
    "KeepEveryInterval": "statevault.manager.policies",
    "KeepEveryNSteps": "statevault.manager.policies",
    "KeepLatest": "statevault.manager.policies",
    "KeepPinned": "statevault.manager.policies",
    "KeyMappingError": "statevault.errors",
    "LoadReport": "statevault.reports.load_report",
    "ManagerLockedError": "statevault.errors",
    "MetaDeviceError": "statevault.errors",
    "ModuleNode": "statevault.tools.inspection",
    "NotACheckpointError": "statevault.errors",
    "PreemptionHandler": "statevault.manager.preemption",
    "Progress": "statevault.engine.progress",
    "Restored": "statevault.manager.steps",
    "RetentionPlan": "statevault.manager.policies",
    "RetentionPolicy": "statevault.manager.policies",
    "ShapeMismatch": "statevault.reports.load_entries",
    "StateDictMismatchError": "statevault.errors",
    "StateVaultError": "statevault.errors",
    "StatsReport": "statevault.reports.stats_report",
    "StepExistsError": "statevault.errors",
    "StepInfo": "statevault.manager.steps",
    "StepNotFoundError": "statevault.errors",
    "StepRecord": "statevault.manager.policies",
    "TensorDelta": "statevault.tools.diff_report",
    "TensorInfo": "statevault.readers.base",
    "TensorSlice": "statevault.readers.slices",
    "TensorStats": "statevault.reports.stats_report",
    "TieStatus": "statevault.reports.load_entries",
    "TiedKey": "statevault.reports.load_entries",
    "TruncatedFileError": "statevault.errors",
    "UnsupportedObjectError": "statevault.errors",
    "VerifyReport": "statevault.tools.verification",
    "build_model": "statevault.loading.build",
    "check": "statevault.loading.load_into",
    "convert": "statevault.tools.conversion",
    "diff": "statevault.tools.diffing",
    "html_report": "statevault.tools.report_page",
    "inspect": "statevault.tools.inspection",
    "load": "statevault.loading.load",
    "load_into": "statevault.loading.load_into",
    "load_model": "statevault.loading.load_into",
    "materialize": "statevault.loading.build",
    "save": "statevault.saving.save",
    "shown": "statevault.reports.display",
    "skip_init": "statevault.loading.meta_init",
    "stats": "statevault.tools.tensor_stats",
    "verify": "statevault.tools.verification",
}

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
    "CheckpointReadError",
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


def __getattr__(name: str) -> Any:
    """Import the module behind a public name on first use, then keep the name here."""
    module_name = _PUBLIC_MODULES.get(name)
    if module_name is None:
        raise AttributeError(f"module 'statevault' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
