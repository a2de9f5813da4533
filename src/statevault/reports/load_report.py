"""LoadReport: everything load_into found, as data (``str()`` for people, ``to_dict()`` for programs).

``repr()`` is one line at any model size (``<LoadReport: 120 loaded, 2 missing, 1 unexpected>``).
``str()`` stays short however large the model: keys are grouped by module ("encoder.layers.3:
4 missing (all of it)") and every list is capped at ``MAX_LISTED`` lines then "... and N more".
``to_dict()`` holds every key, JSON-ready, unless asked for a ``limit``.

May import: ``reports.load_entries``, ``statevault.errors``. Imported by ``loading``, the
tools that cap their own lists (``capped``, ``MAX_LISTED``) and the public package.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from statevault.reports.load_entries import (
    AppliedMapping,
    Cause,
    DtypeCast,
    ShapeMismatch,
    TiedKey,
    TieStatus,
)

MAX_LISTED = 20
_LEAVES_SHOWN = 4


def capped(items: Sequence[Any], limit: int = MAX_LISTED) -> list[str]:
    """At most ``limit`` items as text, then one '... and N more' line."""
    lines = [str(item) for item in items[:limit]]
    if len(items) > limit:
        lines.append(f"... and {len(items) - limit} more")
    return lines


def _plain(value: Any) -> Any:
    """A field value as plain JSON data: tuples as lists, enum members as their names."""
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, tuple):
        return list(value)
    return value


def _ancestors(key: str) -> list[str]:
    """'a.b.c' -> ['', 'a', 'a.b']: every module that contains the key, outermost first."""
    parts = key.split(".")
    return ["", *(".".join(parts[:i]) for i in range(1, len(parts)))]


def group_by_module(keys: Sequence[str], universe: Iterable[str], verb: str) -> list[str]:
    """One line per module: the outermost module whose keys are *all* in ``keys`` collapses.

    ``universe`` is every key on that side (model or checkpoint), so "all of it" is true.
    """
    chosen_keys = set(keys)
    total: Counter[str] = Counter()
    hit: Counter[str] = Counter()
    for key in universe:
        for prefix in _ancestors(key):
            total[prefix] += 1
            if key in chosen_keys:
                hit[prefix] += 1
    groups: dict[tuple[str, bool], list[str]] = {}
    for key in keys:
        ancestors = _ancestors(key)
        # never collapse to the root: top-level modules are the coarsest useful groups
        full = next((p for p in ancestors[1:] if hit[p] == total[p]), None)
        group = (full, True) if full is not None else (ancestors[-1], False)
        groups.setdefault(group, []).append(key)
    lines = []
    for (module, complete), members in groups.items():
        if complete:
            lines.append(f"{module}: {len(members)} {verb} (all of it)")
        else:
            leaves = [k[len(module) + 1 :] if module else k for k in members]
            shown = ", ".join(leaves[:_LEAVES_SHOWN])
            if len(leaves) > _LEAVES_SHOWN:
                shown += f", ... and {len(leaves) - _LEAVES_SHOWN} more"
            lines.append(f"{module or '(top level)'}: {len(members)} {verb} ({shown})")
    return capped(lines)


@dataclass(frozen=True, repr=False)
class LoadReport:
    """What happened (or, for a dry run, would happen) when loading a checkpoint into a module.

    Keys are in the model's namespace after any mapping (``mappings`` says which were applied);
    ``ignored`` holds the original names of checkpoint keys left out by ``prefix=`` or
    ``keys=``; ``not_requested`` the model keys ``keys=`` left out (neither loaded nor missing).
    ``ok`` is True when every model key was filled and every selected checkpoint key was used.
    ``causes`` are the likely reasons for any problem, most likely first, each with its fix.

    ``missing_keys`` and ``unexpected_keys`` are torch's names, and lists as in torch's
    ``load_state_dict`` result, so code written for that result works on this one (``==
    []``, comparing with torch's lists); the report also unpacks as that result does::

        missing_keys, unexpected_keys = statevault.load_into(model, path, strict=False)
    """

    source: str
    target: str = ""  # the module's class name
    matched: tuple[str, ...] = ()
    # lists, as torch's result has them; left out of the hash so the report stays hashable
    missing_keys: list[str] = field(default_factory=list, hash=False)
    unexpected_keys: list[str] = field(default_factory=list, hash=False)
    shape_mismatches: tuple[ShapeMismatch, ...] = ()
    casts: tuple[DtypeCast, ...] = ()
    tied: tuple[TiedKey, ...] = ()
    mappings: tuple[AppliedMapping, ...] = ()
    ignored: tuple[str, ...] = ()
    not_requested: tuple[str, ...] = ()
    causes: tuple[Cause, ...] = ()
    notes: tuple[str, ...] = ()
    dry_run: bool = False
    # build path (strict=False): keys not filled from the file, given the module's own init
    initialised: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not (self.missing_keys or self.unexpected_keys or self.shape_mismatches)

    @property
    def skipped(self) -> tuple[str, ...]:
        """Keys present on both sides but not loaded (their shapes differ)."""
        return tuple(m.key for m in self.shape_mismatches)

    def __iter__(self) -> Iterator[list[str]]:
        """``missing_keys`` then ``unexpected_keys``, as torch's ``_IncompatibleKeys`` unpacks."""
        return iter((self.missing_keys, self.unexpected_keys))

    def __repr__(self) -> str:
        """One line at any model size, like torch's ``<All keys matched successfully>``."""
        verb = "would load" if self.dry_run else "loaded"
        counts = [f"{len(self.matched)} {verb}"]
        if self.ok:
            counts.append("all keys matched successfully")
        else:
            counts += [
                f"{len(self.missing_keys)} missing",
                f"{len(self.unexpected_keys)} unexpected",
            ]
            if self.shape_mismatches:
                counts.append(f"{len(self.shape_mismatches)} shape mismatch(es)")
        return f"<LoadReport: {', '.join(counts)}>"

    def to_dict(self, *, limit: int | None = None) -> dict[str, Any]:
        """A JSON-ready dict; every list is complete unless ``limit`` caps it.

        Capped lists are reported in ``"truncated"`` as field -> number of items left out.
        """
        truncated: dict[str, int] = {}

        def cap(name: str, items: Sequence[Any]) -> list[Any]:
            if limit is not None and len(items) > limit:
                truncated[name] = len(items) - limit
                return list(items[:limit])
            return list(items)

        def record(obj: Any) -> dict[str, Any]:
            return {key: _plain(value) for key, value in obj.__dict__.items()}

        data: dict[str, Any] = {
            "source": self.source,
            "target": self.target,
            "ok": self.ok,
            "dry_run": self.dry_run,
            "counts": {
                "matched": len(self.matched),
                "missing_keys": len(self.missing_keys),
                "unexpected_keys": len(self.unexpected_keys),
                "shape_mismatches": len(self.shape_mismatches),
                "casts": len(self.casts),
                "ignored": len(self.ignored),
                "not_requested": len(self.not_requested),
            },
            "causes": [record(c) for c in self.causes],
            "matched": cap("matched", self.matched),
            "missing_keys": cap("missing_keys", self.missing_keys),
            "unexpected_keys": cap("unexpected_keys", self.unexpected_keys),
            "shape_mismatches": [record(m) for m in cap("shape_mismatches", self.shape_mismatches)],
            "casts": [record(c) for c in cap("casts", self.casts)],
            "tied": [record(t) for t in cap("tied", self.tied)],
            "mappings": [record(m) for m in self.mappings],
            "ignored": cap("ignored", self.ignored),
            "not_requested": cap("not_requested", self.not_requested),
            "initialised": cap("initialised", self.initialised),
            "notes": list(self.notes),
        }
        if limit is not None:
            data["truncated"] = truncated
        return data

    def _checkpoint_keys(self) -> list[str]:
        """Selected checkpoint keys, in the model's namespace (for "all of it" grouping)."""
        through_tie = {t.key for t in self.tied if t.how is TieStatus.FILLED_THROUGH_TIE}
        used = [k for k in self.matched if k not in through_tie]
        return [*used, *self.skipped, *self.unexpected_keys]

    def problem_lines(self) -> list[str]:
        """Causes first, then what is missing, unexpected and mismatched, grouped by module."""
        lines: list[str] = []
        for i, cause in enumerate(self.causes):
            label = "Likely cause" if i == 0 else "Also possible"
            lines.append(f"{label}: {cause.summary}")
            lines.append(f"  Fix: {cause.fix}")
        model_keys = [*self.matched, *self.missing_keys, *self.skipped]
        if self.missing_keys:
            lines.append(f"Missing from checkpoint ({len(self.missing_keys)}):")
            lines += [f"  {g}" for g in group_by_module(self.missing_keys, model_keys, "missing")]
        if self.unexpected_keys:
            lines.append(f"Unexpected in checkpoint ({len(self.unexpected_keys)}):")
            lines += [
                f"  {g}"
                for g in group_by_module(
                    self.unexpected_keys, self._checkpoint_keys(), "unexpected"
                )
            ]
        if self.shape_mismatches:
            lines.append(f"Shape mismatches, not loaded ({len(self.shape_mismatches)}):")
            lines += [f"  {m}" for m in capped(self.shape_mismatches)]
        return lines

    def error_message(self) -> str:
        """The message of the StateDictMismatchError that strict loading raises."""
        counts = (
            f"{len(self.missing_keys)} missing, {len(self.unexpected_keys)} unexpected, "
            f"{len(self.shape_mismatches)} shape mismatch(es)"
        )
        lines = [f"Cannot load {self.source} into {self.target or 'the module'}: {counts}."]
        lines += self.problem_lines()
        lines += self._detail_lines()
        lines.append(
            "Nothing was loaded. Pass strict=False to load the tensors that fit and skip the rest "
            "(the returned report lists them), or statevault.check(model, source) to inspect."
        )
        return "\n".join(lines)

    def _detail_lines(self) -> list[str]:
        lines: list[str] = []
        if self.mappings:
            lines.append("Key mappings applied:")
            lines += [f"  {m}" for m in capped(self.mappings)]
        if self.ignored:
            lines.append(f"Ignored, outside the selected prefix or keys ({len(self.ignored)}):")
            lines += [f"  {g}" for g in group_by_module(self.ignored, self.ignored, "ignored")]
        if self.not_requested:
            lines.append(f"Not requested by keys=, left as they were ({len(self.not_requested)}):")
            lines += [
                f"  {g}"
                for g in group_by_module(
                    self.not_requested,
                    [*self.matched, *self.missing_keys, *self.skipped, *self.not_requested],
                    "not requested",
                )
            ]
        if self.casts:
            pairs = Counter((c.checkpoint_dtype, c.model_dtype) for c in self.casts)
            lines.append(f"Dtype casts ({len(self.casts)}):")
            lines += [f"  {a} -> {b}: {n} tensor(s)" for (a, b), n in pairs.items()]
        if self.tied:
            lines.append(f"Tied weights ({len(self.tied)}):")
            lines += [f"  {t}" for t in capped(self.tied)]
        lines += list(self.notes)
        return lines

    def __str__(self) -> str:
        verb = "Would load" if self.dry_run else "Loaded"
        total = len(self.matched) + len(self.missing_keys) + len(self.shape_mismatches)
        into = f" into {self.target}" if self.target else ""
        head = f"{verb} {len(self.matched)} of {total} model tensor(s) from {self.source}{into}"
        if self.ok:
            head += ": all keys matched successfully"
        return "\n".join([head, *self.problem_lines(), *self._detail_lines()])
