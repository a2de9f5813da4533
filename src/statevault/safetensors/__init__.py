"""``statevault.safetensors``: ``safetensors.torch``'s functions, written and read by statevault.

Replace ``from safetensors.torch import save_file, load_file`` (or ``safe_open`` from
``safetensors``) with ``from statevault.safetensors import ...`` and a program runs unchanged:
same functions, signatures, defaults and return values, and errors a caller's ``except``
clauses still catch (``RuntimeError`` for shared tensors, ``ValueError`` for non-contiguous or
sparse ones, ``TypeError`` for non-str metadata, ``FileNotFoundError``, and
``safetensors.SafetensorError`` for damaged files, unknown names and closed handles: our
:class:`SafetensorError` subclasses it when the safetensors package is installed). What
changes underneath: saves are atomic and record per-tensor checksums, reads verify them and
run in parallel, and any checkpoint statevault opens can be read (shards, torch files).

Files are plain safetensors files either way; the differences a reader can see:
``metadata()`` leaves out statevault's own keys, ``keys()`` also lists the tied names of a
file saved by ``statevault.save`` (they load as one shared tensor), and a slice handle reads
from its open file, so it must be used before the file is closed. ``backend=`` is accepted
and checked, not used: statevault reads with ``preadv`` into the result's memory.

Here: the functions that save and load; ``_opened`` holds ``safe_open`` and its slice
handle, ``_errors`` the errors and how errors from below are raised as safetensors raises
them. May import the layers below the public package (tools, loading, saving, readers, ...),
as ``statevault/__init__.py`` does; nothing else in statevault imports this package.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from statevault.errors import InvalidArgumentError, StateDictMismatchError, UnsupportedObjectError
from statevault.loading.load_into import load_into
from statevault.safetensors._errors import (
    SafetensorError,
    SharedTensorsError,
    SliceIndexError,
    _as_caught,
)
from statevault.safetensors._opened import _check_options, safe_open
from statevault.saving.save import save as _save

__all__ = [
    "SafetensorError",
    "SharedTensorsError",
    "SliceIndexError",
    "load",
    "load_file",
    "load_model",
    "safe_open",
    "save",
    "save_file",
    "save_model",
]


# -- refusals safetensors makes before writing ----------------------------------------------
def _shared_groups(tensors: Mapping[str, torch.Tensor]) -> list[list[str]]:
    """Names of tensors whose bytes overlap, in groups of two or more, each sorted.

    Views of one storage that do not overlap are independent, as safetensors treats them.
    """
    by_storage: dict[tuple[Any, ...], list[tuple[int, int, str]]] = {}
    for name, tensor in tensors.items():
        if tensor.is_meta or tensor.numel() == 0 or tensor.layout is not torch.strided:
            continue
        storage = tensor.untyped_storage()
        if storage.data_ptr() == 0 or storage.nbytes() == 0:
            continue
        first = tensor.data_ptr()
        elements = 1 + sum(
            (size - 1) * step for size, step in zip(tensor.shape, tensor.stride(), strict=True)
        )
        area = (first, first + elements * tensor.element_size(), name)
        by_storage.setdefault((tensor.device, storage.data_ptr()), []).append(area)
    groups: list[list[str]] = []
    for areas in by_storage.values():
        areas.sort()
        group: list[str] = []
        reach = -1
        for start, stop, name in areas:
            if start >= reach:  # past every byte seen so far: a new group begins
                groups.append(group := [])
            group.append(name)
            reach = max(reach, stop)
    return [sorted(group) for group in groups if len(group) > 1]


def _refuse_what_safetensors_refuses(tensors: object) -> dict[str, torch.Tensor]:
    if not isinstance(tensors, dict):
        raise InvalidArgumentError(
            f"save_file: expected a dict of str -> torch.Tensor, got {type(tensors)!r}"
        )
    for name, tensor in tensors.items():
        if not isinstance(name, str):
            raise InvalidArgumentError(
                f"save_file: tensor names must be str, got {name!r} ({type(name).__name__})"
            )
        if not isinstance(tensor, torch.Tensor):
            raise InvalidArgumentError(
                f"save_file: {name!r} is a {type(tensor).__name__}, not a torch.Tensor"
            )
    sparse = [name for name, tensor in tensors.items() if tensor.layout is not torch.strided]
    if sparse:
        raise InvalidArgumentError(
            f"save_file: {sparse} are sparse tensors; make them dense with .to_dense() first "
            "(the file may be much larger)"
        )
    shared = _shared_groups(tensors)
    if shared:
        raise SharedTensorsError(
            f"save_file: these tensors share memory and would be stored twice: {shared}; save "
            "a model with save_model(model, filename), which stores each once, or pass "
            "copies (.clone())"
        )
    for name, tensor in tensors.items():
        if not tensor.is_contiguous():
            raise InvalidArgumentError(
                f"save_file: {name!r} is not contiguous; pass {name!r}.contiguous(), or save "
                "the full tensor it is a view of and slice it after loading"
            )
    return tensors


# -- saving --------------------------------------------------------------------------------
def save_file(
    tensors: dict[str, torch.Tensor],
    filename: str | os.PathLike[str],
    metadata: dict[str, str] | None = None,
) -> None:
    """Save ``tensors`` to ``filename`` as safetensors, atomically and with checksums.

    Example::

        save_file({"embedding": torch.zeros(512, 1024)}, "model.safetensors")
    """
    checked = _refuse_what_safetensors_refuses(tensors)
    if metadata is not None and not isinstance(metadata, dict):
        raise UnsupportedObjectError(
            f"save_file: metadata must be a dict of str -> str, got {type(metadata)!r}"
        )
    with _as_caught():
        _save(checked, filename, metadata=metadata)


def save(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """The bytes :func:`save_file` would write (built in a temporary file, then read)."""
    checked = _refuse_what_safetensors_refuses(tensors)
    with tempfile.TemporaryDirectory(prefix="statevault-") as folder:
        path = Path(folder) / "tensors.safetensors"
        with _as_caught():
            _save(checked, path, metadata=metadata, fsync=False)
        return path.read_bytes()


def save_model(
    model: torch.nn.Module,
    filename: str,
    metadata: dict[str, str] | None = None,
    force_contiguous: bool = True,
) -> None:
    """Save ``model``'s state with each group of shared tensors stored once.

    As safetensors: the name kept is the first, alphabetically, of those that cover their
    whole storage; each dropped name is recorded in the metadata as ``dropped -> kept``
    (a key the caller set is left as it is). The caller's ``metadata`` is not changed.
    """
    state = model.state_dict()
    recorded = dict(metadata) if metadata is not None else None
    for group in _shared_groups(state):
        whole = [name for name in group if _covers_storage(state[name])]
        if not whole:
            raise SharedTensorsError(
                f"save_model: tensors {group} share memory, but none covers all of it, so no "
                "one of them can be stored in place of the others; save copies (.clone())"
            )
        kept = whole[0]
        for name in group:
            if name != kept:
                recorded = recorded if recorded is not None else {}
                recorded.setdefault(name, kept)
                del state[name]
    if force_contiguous:
        state = {name: tensor.contiguous() for name, tensor in state.items()}
    try:
        save_file(state, filename, metadata=recorded)
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(f"{exc} Or use save_model(..., force_contiguous=True)") from None


def _covers_storage(tensor: torch.Tensor) -> bool:
    storage = tensor.untyped_storage()
    return tensor.data_ptr() == storage.data_ptr() and tensor.nbytes == storage.nbytes()


# -- reading -------------------------------------------------------------------------------
def load_file(
    filename: str | os.PathLike[str],
    device: str | int = "cpu",
    *,
    backend: str = "mmap",
) -> dict[str, torch.Tensor]:
    """Every tensor of ``filename`` (read in parallel, checksums verified) on ``device``.

    Example::

        tensors = load_file("model.safetensors")
    """
    with safe_open(filename, framework="pt", device=device, backend=backend) as opened:
        return opened.get_tensors()


def load(data: bytes) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file held as bytes (read through a temporary file)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidArgumentError(f"load: expected bytes, got {type(data).__name__}")
    with tempfile.TemporaryDirectory(prefix="statevault-") as folder:
        path = Path(folder) / "tensors.safetensors"
        path.write_bytes(data)
        return load_file(path)


def load_model(
    model: torch.nn.Module,
    filename: str | os.PathLike[str],
    strict: bool = True,
    device: str | int = "cpu",
    *,
    backend: str = "mmap",
) -> tuple[set[str], list[str]]:
    """Load ``filename`` into ``model`` in place; ``(missing, unexpected)`` as safetensors
    gives them (missing is a set, as safetensors returns it).

    Names a tied group of the model shares count as loaded when the file has one of them.
    A shape mismatch raises ``RuntimeError`` (:class:`~statevault.StateDictMismatchError`)
    even with ``strict=False``, as ``load_state_dict`` does; ``strict=True`` also raises for
    missing or unexpected names, before any weight is changed.
    """
    _check_options("pt", device, backend)
    with _as_caught():
        report = load_into(model, filename, strict=False, auto_fix=False, dry_run=True)
        if report.shape_mismatches or (strict and not report.ok):
            raise StateDictMismatchError(report.error_message(), report)
        report = load_into(model, filename, strict=False, auto_fix=False)
    return set(report.missing_keys), list(report.unexpected_keys)
