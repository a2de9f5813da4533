"""The statevault exception hierarchy.

Every error the library raises on purpose derives from :class:`StateVaultError`, and each
leaf also subclasses the builtin a caller would naturally catch::

    StateVaultError
    ├── CheckpointNotFoundError      (FileNotFoundError)  the path (or, for save, its
    │   │                                                 directory) does not exist
    │   └── StepNotFoundError                             a CheckpointManager has no (valid)
    │                                                     step of that number
    ├── CheckpointKindError          (ValueError)         a healthy file of a kind this entry
    │                                                     point does not read (names the kind)
    ├── CheckpointPermissionError    (PermissionError)    the checkpoint may not be read by
    │                                                     this process
    ├── CheckpointWriteError         (OSError)            save() could not write the path
    │                                                     (``.errno`` is the OS error's)
    ├── CheckpointReadError          (OSError)            the storage failed mid-read (a
    │                                                     dropped connection): retry; says
    │                                                     nothing about the checkpoint
    ├── DestinationExistsError       (FileExistsError)    convert() would replace an existing
    │                                                     file and was not allowed to
    ├── StepExistsError              (FileExistsError)    CheckpointManager.save() of a step
    │                                                     that is committed or in flight
    ├── ManagerLockedError           (RuntimeError)       another CheckpointManager (names its
    │                                                     pid and host) manages the directory
    ├── UnsupportedObjectError       (TypeError)          save() met something it cannot store
    ├── InvalidArgumentError         (ValueError, TypeError) an argument's value or type is
    │                                                     not accepted (names it and the choices)
    ├── KeyMappingError              (ValueError)         load_into's prefix/rename maps two
    │                                                     checkpoint keys onto one name
    ├── DeviceUnavailableError       (RuntimeError)       device= names a device torch cannot use
    ├── MetaDeviceError              (RuntimeError)       load_into met tensors on the meta device
    ├── CorruptFileError             (ValueError)         the file is not what it claims to be
    │   ├── NotACheckpointError                           not a checkpoint of any kind at all
    │   ├── HeaderError                                   malformed or inconsistent header
    │   ├── TruncatedFileError                            fewer bytes on disk than the header needs
    │   └── ChecksumMismatchError                         tensor bytes differ from what was saved
    └── StateDictMismatchError       (RuntimeError)       load_into(strict=True) found problems;
                                                          ``.report`` holds the LoadReport
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from statevault.reports.load_report import LoadReport

__all__ = [
    "CheckpointKindError",
    "CheckpointNotFoundError",
    "CheckpointPermissionError",
    "CheckpointReadError",
    "CheckpointWriteError",
    "ChecksumMismatchError",
    "CorruptFileError",
    "DestinationExistsError",
    "DeviceUnavailableError",
    "HeaderError",
    "InvalidArgumentError",
    "KeyMappingError",
    "ManagerLockedError",
    "MetaDeviceError",
    "NotACheckpointError",
    "StateDictMismatchError",
    "StateVaultError",
    "StepExistsError",
    "StepNotFoundError",
    "TruncatedFileError",
    "UnsupportedObjectError",
]


class StateVaultError(Exception):
    """Root of every error statevault raises deliberately."""


class CheckpointNotFoundError(StateVaultError, FileNotFoundError):
    """The checkpoint path does not exist."""


class StepNotFoundError(CheckpointNotFoundError):
    """A :class:`~statevault.CheckpointManager` has no step of that number, or none that is valid.

    The message names the directory, the step, and the damaged steps it skipped (with why).
    """


class CheckpointKindError(StateVaultError, ValueError):
    """The path is a healthy file of a kind this entry point does not read (not damaged).

    The message says what the file is and which entry point reads it.
    """


class CheckpointWriteError(StateVaultError, OSError):
    """``save`` could not write the path: refused before writing, or the OS failed it.

    The message names the path the caller gave (never the hidden temporary file) and the
    fix; ``errno`` is the OS error's (``ENOSPC``, ``EACCES``, ...), and the OS error itself
    is the ``__cause__``. The previous file at the path is untouched.
    """

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno  # set alone: str() stays the message, not "[Errno n] ..."


class CheckpointReadError(StateVaultError, OSError):
    """The storage holding the checkpoint failed while it was read (object storage: a
    dropped connection, a timeout, a server error).

    Not a finding about the checkpoint (that is :class:`CorruptFileError`): reading again
    may well succeed. The message names the URL, never a credential; the storage's own
    error is the ``__cause__``.
    """


class CheckpointPermissionError(StateVaultError, PermissionError):
    """The checkpoint exists but this process may not read it (names the path and the fix).

    Also a ``PermissionError``, so ``except PermissionError`` keeps working; ``errno`` is
    the OS error's and the OS error is the ``__cause__``.
    """

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno  # set alone: str() stays the message, not "[Errno n] ..."


class DestinationExistsError(StateVaultError, FileExistsError):
    """The output path exists and replacing it was not allowed; ``.path`` names it."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path


class StepExistsError(StateVaultError, FileExistsError):
    """``CheckpointManager.save`` was given a step that is already committed or in flight."""


class ManagerLockedError(StateVaultError, RuntimeError):
    """Another ``CheckpointManager`` (the message names its pid and host) manages the directory."""


class DeviceUnavailableError(StateVaultError, RuntimeError):
    """``device=`` asks for a device this torch build or machine does not have."""


class MetaDeviceError(StateVaultError, RuntimeError):
    """The module's tensors are on the meta device: no memory to load into (use materialize)."""


class UnsupportedObjectError(StateVaultError, TypeError):
    """An object in the state cannot be stored without pickle (message names its path)."""


class InvalidArgumentError(StateVaultError, ValueError, TypeError):
    """An argument's value or type is not one statevault accepts (names it and what is valid).

    Also a ``ValueError`` and a ``TypeError``: code written for either builtin still catches it.
    """


class KeyMappingError(StateVaultError, ValueError):
    """A key mapping (``prefix=``, ``strip_prefix=``, ``rename=``) is invalid or not one-to-one."""


class CorruptFileError(StateVaultError, ValueError):
    """The file is damaged or is not a safetensors/statevault file."""


class NotACheckpointError(CorruptFileError):
    """The file is not a checkpoint at all (no safetensors header, not a torch file).

    A :class:`CorruptFileError` so existing handlers still catch it, but tools tell it apart
    from damage: a photo is "not a checkpoint" (could not do the job), a checkpoint with a
    bad checksum is "damaged" (a finding).
    """


class HeaderError(CorruptFileError):
    """The header is malformed, inconsistent, or unsafe to follow."""


class TruncatedFileError(CorruptFileError):
    """The file is shorter than its header says it must be."""


class ChecksumMismatchError(CorruptFileError):
    """A tensor's bytes do not hash to the digest recorded when it was saved."""


class StateDictMismatchError(StateVaultError, RuntimeError):
    """``load_into(strict=True)`` found missing, unexpected or mismatched keys."""

    def __init__(self, message: str, report: LoadReport) -> None:
        super().__init__(message)
        self.report = report
