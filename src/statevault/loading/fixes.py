"""Printed fixes: the call the user made, as code, corrected by a cause's new options.

Every cause a diagnosis finds ends in code the user can run: the very call they made
(``Call``: which entry point, its first two arguments and the options they passed) with the
options the fix changes, or loading into a submodule, or editing the state dict first. Pure
string building (no torch, no I/O): tests run each printed fix (tests/loading/test_fixes.py).

May import: ``reports.load_entries``, ``statevault.errors``. Imported by the cause finders
(``loading.diagnose``, ``loading.shape_causes``) and the entry points that describe their call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from statevault.errors import InvalidArgumentError
from statevault.reports.load_entries import Cause, CauseKind


class EntryPoint(StrEnum):
    """The public functions a printed fix can be a call of."""

    LOAD_INTO = "load_into"
    LOAD_MODEL = "load_model"
    CHECK = "check"
    BUILD_MODEL = "build_model"
    MATERIALIZE = "materialize"


@dataclass(frozen=True)
class Call:
    """The call a diagnosis serves, so that every printed fix is that same call, corrected.

    ``entry`` is the public function (load_into, check, load_model, build_model,
    materialize); ``target`` and ``source`` are its first two arguments as code ("model",
    "Net", a path's repr, "state"); ``options`` are the keyword arguments the caller passed,
    already rendered as code, in the order they are printed.
    """

    entry: EntryPoint = EntryPoint.LOAD_INTO
    target: str = "model"
    source: str = "source"
    options: tuple[tuple[str, str], ...] = ()

    @property
    def builds(self) -> bool:
        """True for entries that build the parameters themselves (no submodule to load into)."""
        return self.entry in (EntryPoint.BUILD_MODEL, EntryPoint.MATERIALIZE)

    def render(
        self,
        changes: Mapping[str, object] | None = None,
        *,
        target: str | None = None,
        source: str | None = None,
    ) -> str:
        """This call as code, with ``changes`` (literal option values) applied."""
        entry = self.entry
        if entry == EntryPoint.CHECK and changes and "strict" in changes:
            entry = EntryPoint.LOAD_INTO  # check never raises: strictness is load_into's option
        options = dict(self.options)
        options.update({name: literal(value) for name, value in (changes or {}).items()})
        if entry == EntryPoint.CHECK:
            options.pop("strict", None)
        arguments = [target or self.target, source or self.source]
        arguments += [f"{name}={code}" for name, code in options.items()]
        return f"statevault.{entry}({', '.join(arguments)})"


def literal(value: object) -> str:
    """``value`` as Python source that evaluates back to it (raw strings for regexes)."""
    if isinstance(value, str):
        if value.isprintable() and '"' not in value and "\\" not in value:
            return f'"{value}"'
        if "\\" in value and '"' not in value and "\n" not in value:
            trailing = len(value) - len(value.rstrip("\\"))
            if trailing % 2 == 0:
                return f'r"{value}"'
        return repr(value)
    if isinstance(value, tuple):
        inner = ", ".join(literal(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, list):
        return "[" + ", ".join(literal(v) for v in value) + "]"
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    raise InvalidArgumentError(f"{value!r} has no literal form ({type(value).__name__})")


def unfilled(call: Call) -> str:
    """What tensors the checkpoint does not fill hold after the fixed call."""
    if call.builds:
        return "get the module's own initialisation (as the constructor would give them)"
    return "keep their current values (a fresh model's initialisation)"


def option_fix(
    kind: CauseKind, summary: str, call: Call, options: Mapping[str, object], why: str = ""
) -> Cause:
    """A cause fixed by passing ``options`` to the same call."""
    code = call.render(options)
    return Cause(kind, summary, code + (f" ({why})" if why else ""), dict(options), code=code)


def submodule_fix(
    kind: CauseKind, summary: str, call: Call, prefix: str, why: str = "", *, whole: bool = False
) -> Cause:
    """A cause fixed by loading into the submodule at ``prefix``; when building (there is no
    submodule to load into yet), by mapping the checkpoint's keys under it instead. ``whole``:
    that sub-tree is the whole model, so nothing is left to initialise."""
    if call.builds:
        options: dict[str, object] = {"rename": [("^", prefix)]}
        note = "the checkpoint's keys go under that sub-tree"
        if not whole:
            options["strict"] = False
            note += f"; the rest is not in it and its tensors {unfilled(call)}"
        return option_fix(kind, summary, call, options, why or note)
    path = attribute_path(prefix)
    code = call.render(target=f"{call.target}.{path}")
    return Cause(kind, summary, code + (f" ({why})" if why else ""), {}, path, code)


def attribute_path(prefix: str) -> str:
    """'layers.3.attn.' -> 'layers[3].attn' (how the submodule is reached in Python)."""
    path = ""
    for part in prefix.rstrip(".").split("."):
        path += f"[{part}]" if part.isdigit() else f".{part}"
    return path.lstrip(".")


def edit_then_load(
    call: Call, stored: Mapping[str, str], keys: Sequence[str], edit: Callable[[str], str]
) -> str:
    """Code that reads the checkpoint as a dict, edits ``keys`` and loads the dict instead.

    ``stored`` maps model keys to checkpoint names (they differ when names were mapped).
    """
    read = "dict(state)" if call.source == "state" else f"statevault.load({call.source})"
    edits = ", ".join(f"{literal(stored.get(k, k))}: {edit(stored.get(k, k))}" for k in keys)
    return f"state = {read}; state.update({{{edits}}}); {call.render(source='state')}"


def model_key(stored: Mapping[str, str], name: str) -> str:
    """The model key whose checkpoint name is ``name`` (few keys: only mismatched ones)."""
    return next((k for k, n in stored.items() if n == name), name)
