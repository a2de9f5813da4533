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

May import the layers below the public package (tools, loading, saving, readers, ...), as
``statevault/__init__.py`` does; nothing inside statevault imports this module.
"""

from __future__ import annotations

import importlib
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from statevault.engine.ties import memory_identity
from statevault.errors import (
    InvalidArgumentError,
    StateDictMismatchError,
    StateVaultError,
    UnsupportedObjectError,
)
from statevault.loading.load_into import load_into
from statevault.readers.base import Checkpoint
from statevault.readers.devices import usable_device
from statevault.readers.slices import TensorSlice
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

_FRAMEWORKS = ("pt", "torch", "pytorch")
_BACKENDS = ("mmap", "pread")


def _reference_error() -> type[Exception]:
    """safetensors' own error class when that package is installed (callers catch it)."""
    try:
        module = importlib.import_module("safetensors")
    except ImportError:
        return Exception
    found = getattr(module, "SafetensorError", None)
    return found if isinstance(found, type) and issubclass(found, Exception) else Exception


if TYPE_CHECKING:
    _ReferenceError = Exception
else:
    _ReferenceError = _reference_error()


class SafetensorError(StateVaultError, _ReferenceError):
    """What safetensors raises as ``SafetensorError``: a damaged file, an unknown tensor
    name, a closed handle, a bad ``framework``/``backend``/``device``.

    Also a ``safetensors.SafetensorError`` when that package is installed.
    """


class SharedTensorsError(UnsupportedObjectError, RuntimeError):
    """``save_file`` got tensors that share memory (safetensors raises ``RuntimeError``)."""


class SliceIndexError(StateVaultError, IndexError):
    """A slice handle indexed out of range or with more indices than dimensions."""


@contextmanager
def _as_caught() -> Iterator[None]:
    """Our errors from below, made also a :class:`SafetensorError`, as safetensors raises.

    The original class stays a base too: ``except statevault.HeaderError`` still works.
    """
    try:
        yield
    except (SafetensorError, InvalidArgumentError, StateDictMismatchError):
        raise
    except StateVaultError as exc:
        both = _with_reference_error(type(exc))
        copy = both(*exc.args)  # OSError kinds keep their errno, set from the arguments
        copy.__dict__.update(exc.__dict__)
        raise copy from exc


_DUAL: dict[type[StateVaultError], type[StateVaultError]] = {}


def _with_reference_error(cls: type[StateVaultError]) -> type[StateVaultError]:
    if cls not in _DUAL:
        _DUAL[cls] = type(cls.__name__, (cls, SafetensorError), {"__module__": __name__})
    return _DUAL[cls]


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
def _check_options(framework: str, device: str | int, backend: str) -> torch.device:
    if framework not in _FRAMEWORKS:
        raise SafetensorError(
            f"framework {framework!r} is not supported by statevault.safetensors, which gives "
            'torch tensors: pass framework="pt" (for numpy, flax or tf use the safetensors package)'
        )
    if backend not in _BACKENDS:
        raise SafetensorError(f"backend {backend!r} is invalid; expected one of {_BACKENDS}")
    try:
        return torch.device(device)  # an int is a CUDA index, as safetensors takes it
    except (RuntimeError, TypeError) as exc:
        raise SafetensorError(f"device {device!r} is invalid: {exc}") from None


class safe_open:  # safetensors' name, so the import line is all that changes
    """An open checkpoint, read lazily: ``keys()``, ``metadata()``, ``get_tensor``,
    ``get_slice``. Usable with or without ``with``; ``with`` closes it.

    Example::

        with safe_open("model.safetensors", framework="pt", device="cpu") as f:
            embedding = f.get_tensor("embedding")
            rows = f.get_slice("embedding")[:1000]
    """

    def __init__(
        self,
        filename: str | os.PathLike[str],
        framework: str,
        device: str | int = "cpu",
        *,
        backend: str = "mmap",
    ) -> None:
        self._device = _check_options(framework, device, backend)
        if not isinstance(filename, (str, os.PathLike)):
            raise InvalidArgumentError(
                f"safe_open: filename must be a str or os.PathLike, got {type(filename)!r}"
            )
        with _as_caught():
            self._checkpoint: Checkpoint | None = Checkpoint(filename, weights=True)

    def _open(self) -> Checkpoint:
        if self._checkpoint is None:
            raise SafetensorError("this safe_open file is closed; open it again to read from it")
        return self._checkpoint

    def _known(self, name: str) -> Checkpoint:
        checkpoint = self._open()
        if name not in checkpoint.tensors and name not in checkpoint.aliases:
            raise SafetensorError(
                f"{checkpoint.label}: has no tensor named {name!r} (keys() lists the names)"
            )
        return checkpoint

    def keys(self) -> list[str]:
        """Every tensor name, sorted."""
        return sorted(self._open().keys())

    def offset_keys(self) -> list[str]:
        """Every tensor name in file order (tied names, which have no bytes, last)."""
        return self._open().keys()

    def metadata(self) -> dict[str, str] | None:
        """The caller's str -> str metadata (statevault's own keys left out), or None."""
        return dict(self._open().metadata) or None

    def get_tensor(self, name: str) -> torch.Tensor:
        checkpoint = self._known(name)
        with _as_caught():
            tensor = checkpoint.read([name])[name]
            return tensor if self._device.type == "cpu" else tensor.to(self._usable())

    def get_tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor, read in parallel; tied names share one tensor."""
        with _as_caught():
            tensors = self._open().read()
            if self._device.type == "cpu":
                return tensors
            target = self._usable()
            moved: dict[tuple[Any, ...], torch.Tensor] = {}
            for name, tensor in tensors.items():
                identity = memory_identity(tensor) or (id(tensor),)
                tensors[name] = moved.setdefault(identity, tensor.to(target))
            return tensors

    def get_slice(self, name: str) -> _SafeSlice:
        return _SafeSlice(TensorSlice(self._known(name), name), self._device)

    def _usable(self) -> torch.device:
        return usable_device(self._device)

    def __enter__(self) -> safe_open:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._checkpoint is not None:
            self._checkpoint.close()
            self._checkpoint = None


class _SafeSlice:
    """safetensors' slice handle: any basic index (steps, ``...``, ``None``, negatives).

    The bytes of the smallest step-1 box around the index are read (``TensorSlice``), then
    the index is applied to that box in memory with torch's own semantics.
    """

    def __init__(self, part: TensorSlice, device: torch.device) -> None:
        self._part = part
        self._device = device

    def get_shape(self) -> list[int]:
        return self._part.get_shape()

    def get_dtype(self) -> str:
        return self._part.get_dtype()

    def __getitem__(self, key: Any) -> torch.Tensor:
        box, rest = _box_and_rest(key, self._part.get_shape())
        with _as_caught():
            result = self._part[box][rest]
            return result if self._device.type == "cpu" else result.to(usable_device(self._device))

    def __repr__(self) -> str:
        return repr(self._part)


def _box_and_rest(key: Any, shape: list[int]) -> tuple[tuple[slice, ...], tuple[Any, ...]]:
    """The step-1 box to read, and the index that gives the caller's result from the box."""
    items = list(key) if isinstance(key, tuple) else [key]
    used = sum(1 for item in items if item is not None and item is not Ellipsis)
    if items.count(Ellipsis) > 1:
        raise SliceIndexError("an index can only have a single ellipsis ('...')")
    if used > len(shape):
        raise SliceIndexError(
            f"too many indices ({used}) for a tensor of {len(shape)} dimension(s)"
        )
    if Ellipsis in items:
        at = items.index(Ellipsis)
        items[at : at + 1] = [slice(None)] * (len(shape) - used)
    box: list[slice] = []
    rest: list[Any] = []
    dim = 0
    for item in items:
        if item is None:
            rest.append(None)
            continue
        size = shape[dim]
        if isinstance(item, slice):
            start, stop, step = item.indices(size)
            if step <= 0:
                raise InvalidArgumentError(f"slice step must be greater than zero, got {step}")
            box.append(slice(start, max(start, stop)))
            rest.append(slice(None, None, step))
        elif isinstance(item, int) and not isinstance(item, bool):
            if not -size <= item < size:
                raise SliceIndexError(
                    f"index {item} is out of bounds for dimension {dim} with size {size}"
                )
            box.append(slice(item % size, item % size + 1))
            rest.append(0)
        else:
            raise InvalidArgumentError(
                f"get_slice takes integers, slices, '...' and None, got {item!r}"
            )
        dim += 1
    return tuple(box), tuple(rest)


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
