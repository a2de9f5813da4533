"""The options every loading entry point shares, checked once, and the call they describe.

``LoadOptions`` is load_into's keywords as one value, refused with
:class:`~statevault.errors.InvalidArgumentError` when one has the wrong type or spelling (a
``dtype`` is any spelling :func:`~statevault.fileformat.dtypes.float_dtype` takes).
``describe_call`` turns an entry point's arguments into the ``Call`` every printed fix
repeats, leaving out options at their defaults.

May import: ``loading.fixes``, ``loading.keymap``, ``readers``, ``fileformat``,
``statevault.errors``. Imported by ``loading.plan``, ``loading.load_into`` and
``loading.build``.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields

import torch

from statevault.engine.fsspec_storage import StorageOptions
from statevault.fileformat.dtypes import DtypeLike, dtype_name, float_dtype
from statevault.loading.fixes import Call, EntryPoint, literal
from statevault.loading.keymap import KeySelection, Prefixes, Rename, check_name_options
from statevault.readers.dispatch import Source
from statevault.readers.safetensors_file import SafetensorsCheckpoint

# What ``dtype=`` takes: a torch dtype or a name such as "bf16" (see float_dtype)


@dataclass(frozen=True)
class LoadOptions:
    """The options every loading entry point shares (``load_into``'s keywords), as one value.

    One value instead of nine keywords passed down each layer; ``given`` gives an entry
    point's own keywords back for the call a printed fix repeats. Built only from valid
    values: a bad ``prefix``, ``strip_prefix``, ``rename`` or ``dtype`` is refused here,
    before any file is opened. ``mmap``: the module's tensors become views of the file's
    private mapping instead of being filled (``loading.mapped``).
    """

    strict: bool = True
    verify: bool = True
    prefix: str | None = None
    strip_prefix: Prefixes | None = None
    rename: Rename | None = None
    auto_fix: bool = True
    dtype: DtypeLike | None = None
    dry_run: bool = False
    assign: bool = False
    keys: KeySelection | None = None
    storage_options: StorageOptions | None = None  # for a URL source: passed to fsspec
    mmap: bool = False

    def __post_init__(self) -> None:
        check_name_options(
            prefix=self.prefix, strip_prefix=self.strip_prefix, rename=self.rename, keys=self.keys
        )
        _ = self.float_dtype  # refuses a dtype that is not a floating-point one

    @property
    def float_dtype(self) -> torch.dtype | None:
        """``dtype`` as a torch dtype (``"bf16"`` -> ``torch.bfloat16``), or None."""
        return None if self.dtype is None else float_dtype(self.dtype, argument="dtype")

    def given(self, *names: str) -> dict[str, object]:
        """The named options (all by default) as the keywords the caller wrote."""
        wanted = names or tuple(f.name for f in fields(self))
        return {name: getattr(self, name) for name in wanted}


# each option's default: a printed fix leaves out what the caller left at its default
_DEFAULTS: dict[str, object] = {
    **{f.name: f.default for f in fields(LoadOptions)},
    "device": "cpu",  # build_model and materialize
    "args": (),
    "kwargs": None,
}


# options whose values a printed fix never shows: storage_options may hold credentials
_BY_NAME_ONLY = frozenset({"storage_options"})


def _as_code(name: str, value: object) -> str:
    """An option's value as code; values with no literal form print as the option's name."""
    if name in _BY_NAME_ONLY:
        return name
    if isinstance(value, torch.dtype):
        return f"torch.{dtype_name(value)}"
    if isinstance(value, torch.device):
        value = str(value)
    try:
        code = literal(value) if not isinstance(value, dict) else repr(value)
        if ast.literal_eval(code) == value:
            return code
    except (TypeError, ValueError, SyntaxError):  # InvalidArgumentError is both
        pass
    return name  # e.g. rename=rename for a callable, args=args for a config object


def source_code(source: Source) -> str:
    """How a printed fix names the source: the path itself, or ``state`` for a dict."""
    if isinstance(source, SafetensorsCheckpoint):
        return literal(str(source.path))
    if isinstance(source, (str, os.PathLike)):
        return literal(os.fspath(source))
    return "state"


def describe_call(
    entry: EntryPoint, target: str, source: Source, given: Mapping[str, object]
) -> Call:
    """The call being made, for fixes printed as that call corrected (defaults left out)."""
    options = tuple(
        (name, _as_code(name, value))
        for name, value in given.items()
        if not (
            value is _DEFAULTS.get(name)
            or (type(value) is type(_DEFAULTS.get(name)) and value == _DEFAULTS.get(name))
        )
    )
    return Call(entry, target, source_code(source), options)
