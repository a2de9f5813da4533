"""The public surface: a sorted, complete __all__ and one exception tree."""

from __future__ import annotations

import inspect

import pytest

import statevault
import statevault.errors


def test_all_is_sorted_and_unique() -> None:
    assert list(statevault.__all__) == sorted(set(statevault.__all__))


def test_every_name_in_all_resolves() -> None:
    missing = [name for name in statevault.__all__ if not hasattr(statevault, name)]
    assert missing == []


def test_all_lists_every_public_function_and_class_we_define() -> None:
    ours = {
        name
        for name, value in vars(statevault).items()
        if not name.startswith("_")
        and (inspect.isfunction(value) or inspect.isclass(value))
        and value.__module__.startswith("statevault")
    }
    assert ours - set(statevault.__all__) == set()
    assert {"save", "load", "load_into", "Checkpoint", "LoadReport"} <= ours


def test_version_is_a_string() -> None:
    assert isinstance(statevault.__version__, str) and statevault.__version__.count(".") == 2


def test_errors_module_exports_the_same_exceptions() -> None:
    exported = set(statevault.errors.__all__)
    assert exported <= set(statevault.__all__)
    assert list(statevault.errors.__all__) == sorted(exported)
    for name in exported:
        assert getattr(statevault, name) is getattr(statevault.errors, name)


LEAVES = [
    (statevault.CheckpointNotFoundError, FileNotFoundError),
    (statevault.CheckpointPermissionError, PermissionError),
    (statevault.CheckpointKindError, ValueError),
    (statevault.CheckpointWriteError, OSError),
    (statevault.UnsupportedObjectError, TypeError),
    (statevault.CorruptFileError, ValueError),
    (statevault.HeaderError, ValueError),
    (statevault.TruncatedFileError, ValueError),
    (statevault.ChecksumMismatchError, ValueError),
    (statevault.StateDictMismatchError, RuntimeError),
    (statevault.KeyMappingError, ValueError),
    (statevault.DeviceUnavailableError, RuntimeError),
    (statevault.MetaDeviceError, RuntimeError),
    (statevault.DestinationExistsError, FileExistsError),
    (statevault.NotACheckpointError, ValueError),
    (statevault.InvalidArgumentError, ValueError),
    (statevault.InvalidArgumentError, TypeError),
    (statevault.StepNotFoundError, FileNotFoundError),
    (statevault.StepExistsError, FileExistsError),
    (statevault.ManagerLockedError, RuntimeError),
]


@pytest.mark.parametrize(("error", "builtin"), LEAVES, ids=lambda c: c.__name__)
def test_each_error_is_ours_and_its_builtin(
    error: type[Exception], builtin: type[Exception]
) -> None:
    assert issubclass(error, statevault.StateVaultError)
    assert issubclass(error, builtin)


def test_corruption_errors_share_one_parent() -> None:
    for error in (
        statevault.HeaderError,
        statevault.TruncatedFileError,
        statevault.ChecksumMismatchError,
    ):
        assert issubclass(error, statevault.CorruptFileError)


def test_every_exception_we_export_is_in_the_tree() -> None:
    exported = [
        getattr(statevault, name)
        for name in statevault.__all__
        if inspect.isclass(getattr(statevault, name))
        and issubclass(getattr(statevault, name), BaseException)
    ]
    assert set(exported) == {statevault.StateVaultError, *(leaf for leaf, _ in LEAVES)}
    assert statevault.StateVaultError.__bases__ == (Exception,)


def test_keyword_only_options() -> None:
    for function, positional in [
        (statevault.save, ["obj", "path"]),
        (statevault.load, ["path"]),
        (statevault.load_into, ["module", "source"]),
        (statevault.load_model, ["model", "source"]),
        (statevault.check, ["module", "source"]),
        (statevault.build_model, ["factory", "source"]),
        (statevault.materialize, ["module", "source"]),
        (statevault.open_checkpoint, ["source"]),
        (statevault.CheckpointManager, ["directory"]),
        (statevault.CheckpointManager.save, ["self", "step", "state"]),
        (statevault.CheckpointManager.restore, ["self", "step"]),
        (statevault.PreemptionHandler, ["manager"]),
    ]:
        parameters = inspect.signature(function).parameters.values()
        assert [p.name for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD] == positional
        assert all(p.kind is p.KEYWORD_ONLY for p in parameters if p.name not in positional)
