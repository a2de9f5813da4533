"""Key mapping: turn checkpoint key names into the model's names before they are matched.

Pure functions over lists of names (no torch, no I/O). The steps run in this order:

1. ``auto_fix``: names that wrappers add when a model is saved wrapped are removed from the
   checkpoint's keys (a leading ``module.`` from DataParallel/DDP when *every* key has it;
   ``_orig_mod``, ``_fsdp_wrapped_module`` and ``_checkpoint_wrapped_module`` anywhere), unless
   the model has the same wrapper. Only when the result is one-to-one; otherwise nothing changes.
2. ``prefix="backbone."``: select a sub-tree. Only keys under the prefix are used, with the
   prefix removed; every other checkpoint key is *ignored* (listed in the report, not an error).
3. ``strip_prefix="model."`` (or a sequence of prefixes): remove the first prefix a key starts
   with from the keys that have one; keep the others.
4. ``rename``: ``(regex, replacement)`` pairs applied in order with ``re.sub``, or a callable.
5. ``auto_fix`` again, the other way round: when the *model* is the wrapped one (a DDP or
   compiled model loading a plain checkpoint), checkpoint keys get the model's wrapper names.
6. ``keys``: a regex searched in each name, or a callable name -> bool, selects a subset by
   the *model's* names (after the steps above); checkpoint keys outside it are ignored, like
   those outside ``prefix``. Model keys outside it are the caller's to report (not requested).

Explicit steps (2-4) that map two checkpoint keys onto one name raise
:class:`~statevault.errors.KeyMappingError`; automatic steps just stand down and say so. A
``prefix``, ``strip_prefix`` or ``rename`` of the wrong type raises
:class:`~statevault.errors.InvalidArgumentError` (``check_name_options``), never a character-
by-character walk of a string.

May import: ``reports.load_entries``, ``statevault.errors``. Imported by the rest of
``loading`` and by tools that map names the same way.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass

from statevault.errors import InvalidArgumentError, KeyMappingError
from statevault.reports.load_entries import AppliedMapping

Rename = Sequence[tuple[str, str]] | Callable[[str], str]
# one prefix, or several: the first one a key starts with is removed
Prefixes = str | Sequence[str]
# a subset of tensor names: a regex searched in each name, or a callable name -> bool
KeySelection = str | Callable[[str], bool]

# Wrapper attribute -> what put it there. ``module`` only counts as a leading prefix shared by
# every key (a user's own submodule may be called "module"); the others are unambiguous anywhere.
WRAPPERS = {
    "module": "wrapped in DataParallel/DistributedDataParallel",
    "_orig_mod": "compiled with torch.compile",
    "_fsdp_wrapped_module": "wrapped in FullyShardedDataParallel (FSDP)",
    "_checkpoint_wrapped_module": "wrapped with checkpoint_wrapper (activation checkpointing)",
}
_ANYWHERE = ("_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module")


@dataclass(frozen=True)
class KeyMap:
    """The result of mapping: model-side name -> checkpoint name, plus what was done."""

    pairs: dict[str, str]  # mapped name -> checkpoint name, in checkpoint order
    ignored: tuple[str, ...] = ()  # checkpoint keys left out by prefix= or keys=
    applied: tuple[AppliedMapping, ...] = ()
    notes: tuple[str, ...] = ()


def remove_segments(name: str, segment: str) -> str:
    """``name`` without any dotted component equal to ``segment``."""
    return ".".join(part for part in name.split(".") if part != segment)


def _has_segment(names: Iterable[str], segment: str) -> bool:
    # the substring test first: splitting every one of 20,000 names, three segments over,
    # was 20 ms of each load_into
    return any(segment in name and segment in name.split(".") for name in names)


def _segments_in(names: Iterable[str], segments: Sequence[str]) -> set[str]:
    """Which of ``segments`` some name has as a dotted component; one pass over ``names``."""
    found: set[str] = set()
    if not segments:
        return found
    for name in names:
        for segment in segments:
            if segment in name and segment in name.split("."):
                found.add(segment)
        if len(found) == len(segments):
            break
    return found


def _all_start_with(names: Iterable[str], prefix: str) -> bool:
    """True when there are names and all start with ``prefix``; stops at the first that does not.

    Iterates only: the model's names may be listed on demand, so asking their number would
    walk the whole model.
    """
    empty = True
    for name in names:
        if not name.startswith(prefix):
            return False
        empty = False
    return not empty


class _Mapper:
    """Current names (parallel to the original checkpoint names) and the steps applied."""

    def __init__(self, originals: Sequence[str]) -> None:
        self.originals = list(originals)
        self.current = self.originals  # never changed in place: apply() replaces the list
        self.applied: list[AppliedMapping] = []
        self.notes: list[str] = []

    def apply(self, rule: str, reason: str, new: Sequence[str], *, automatic: bool = False) -> bool:
        """Adopt ``new`` names if they are one-to-one; record the step if it changed anything."""
        changed = [i for i, (a, b) in enumerate(zip(self.current, new, strict=True)) if a != b]
        if not changed:
            return False
        seen: dict[str, int] = {}
        for i, name in enumerate(new):
            if name in seen:
                first, second = self.originals[seen[name]], self.originals[i]
                if automatic:
                    # the unwrapping loop retries a step after another one progressed: say once
                    note = f"auto_fix did not {rule}: {first!r} and {second!r} would both become {name!r}"
                    if note not in self.notes:
                        self.notes.append(note)
                    return False
                raise KeyMappingError(
                    f"{rule}: checkpoint keys {first!r} and {second!r} both become {name!r}; "
                    "make the mapping one-to-one"
                )
            seen[name] = i
        i = changed[0]
        example = (self.originals[i], new[i])
        self.applied.append(AppliedMapping(rule, reason, len(changed), example, automatic))
        self.current = list(new)
        return True


def _unwrap_checkpoint(mapper: _Mapper, model_keys: Collection[str]) -> None:
    """auto_fix, checkpoint side: drop wrapper names the model does not have.

    The checkpoint's names are looked at first: the model's are only read when the checkpoint
    has a wrapper name, since listing them may mean walking every module.
    """
    for _ in range(4):  # wrappers nest (DDP around a compiled model): peel a few layers
        progressed = False
        if _all_start_with(mapper.current, "module.") and not _all_start_with(
            model_keys, "module."
        ):
            new = [name.removeprefix("module.") for name in mapper.current]
            progressed |= mapper.apply(
                "strip 'module.'",
                "checkpoint saved from a model " + WRAPPERS["module"],
                new,
                automatic=True,
            )
        for segment in _ANYWHERE:
            # without the segment in the checkpoint nothing would change
            if not _has_segment(mapper.current, segment) or _has_segment(model_keys, segment):
                continue
            new = [
                remove_segments(name, segment) if segment in name else name
                for name in mapper.current
            ]
            progressed |= mapper.apply(
                f"remove '{segment}.'",
                "checkpoint saved from a model " + WRAPPERS[segment],
                new,
                automatic=True,
            )
        if not progressed:
            return


def _wrap_for_model(mapper: _Mapper, model_keys: Collection[str]) -> None:
    """auto_fix, model side: give checkpoint keys the wrapper names the model has."""
    leading = _all_start_with(model_keys, "module.") and not _all_start_with(
        mapper.current, "module."
    )
    absent = [s for s in _ANYWHERE if not _has_segment(mapper.current, s)]
    present = _segments_in(model_keys, absent)  # one pass over the model's names
    segments = [s for s in absent if s in present]
    if not leading and not segments:
        return
    model_list = list(model_keys)
    plain: dict[str, str] = {}
    for key in model_list:
        name = key.removeprefix("module.") if leading else key
        for segment in segments:
            name = remove_segments(name, segment)
        if name in plain:  # two model keys look alike without wrappers: cannot choose
            mapper.notes.append(
                f"auto_fix did not add wrapper names: model keys {plain[name]!r} and {key!r} "
                "differ only in them"
            )
            return
        plain[name] = key
    model_set = set(model_list)
    new = [name if name in model_set else plain.get(name, name) for name in mapper.current]
    added = ["module"] if leading else []
    what = " and ".join(WRAPPERS[s] for s in [*added, *segments])
    attribute = ".".join([*added, *segments])
    mapper.apply(
        f"add '{attribute}.' wrapper names",
        f"the model is {what}; load into the unwrapped model to avoid this",
        new,
        automatic=True,
    )


def strip_prefixes(value: Prefixes, *, argument: str = "strip_prefix") -> tuple[str, ...]:
    """A ``strip_prefix=`` value as the prefixes it names: one str is one prefix, not its letters.

    Raises :class:`InvalidArgumentError` for anything but a non-empty str or a non-empty
    sequence of non-empty strs.
    """
    prefixes = (value,) if isinstance(value, str) else value
    valid = isinstance(prefixes, (tuple, list)) and all(isinstance(p, str) and p for p in prefixes)
    if not valid or not prefixes:
        raise InvalidArgumentError(
            f"{argument}={value!r} is not a prefix: pass a non-empty str such as 'model.' or a "
            "list of them such as ['model.', 'module.'] (the first one a key starts with is "
            "removed)"
        )
    return tuple(prefixes)


def _without_prefix(name: str, prefixes: Sequence[str]) -> str:
    """``name`` without the first of ``prefixes`` it starts with."""
    for prefix in prefixes:
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def _rename_pairs(rename: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """``rename=`` rules as (regex, replacement) pairs; a str or a lone pair is refused."""
    usage = (
        "pass a list of (regex, replacement) pairs such as [(r'^fc\\.', 'classifier.')], or a "
        "function from the checkpoint's name to the model's"
    )
    if isinstance(rename, str) or not isinstance(rename, (tuple, list)):
        raise InvalidArgumentError(f"rename={rename!r} is not a rename rule: {usage}")
    pairs: list[tuple[str, str]] = []
    for item in rename:
        if not (
            isinstance(item, (tuple, list))
            and len(item) == 2
            and all(isinstance(s, str) for s in item)
        ):
            raise InvalidArgumentError(
                f"rename={rename!r}: {item!r} is not a (regex, replacement) pair of strs: {usage}"
            )
        pairs.append((item[0], item[1]))
    return pairs


def key_selector(keys: KeySelection) -> Callable[[str], bool]:
    """``keys=`` as a test on one name: a regex is searched in it (``re.search``), a callable
    is called and must return a bool. A bad regex or type raises InvalidArgumentError."""
    if callable(keys):
        label = getattr(keys, "__name__", type(keys).__name__)

        def chosen(name: str) -> bool:
            answer = keys(name)
            if not isinstance(answer, bool):
                raise InvalidArgumentError(
                    f"keys=: {label}({name!r}) returned {answer!r}; a keys function must return "
                    "True (load the key) or False"
                )
            return answer

        return chosen
    if not isinstance(keys, str):
        raise InvalidArgumentError(
            f"keys={keys!r:.80} selects nothing: pass a regular expression (str) searched in "
            "each name, or a function from a name to True/False"
        )
    try:
        pattern = re.compile(keys)
    except re.error as exc:
        raise InvalidArgumentError(
            f"keys={keys!r} is not a valid regular expression: {exc}"
        ) from None
    return lambda name: pattern.search(name) is not None


def check_name_options(
    *,
    prefix: object = None,
    strip_prefix: object = None,
    rename: object = None,
    keys: object = None,
) -> None:
    """Refuse a ``prefix``, ``strip_prefix``, ``rename`` or ``keys`` of the wrong type, naming it.

    ``prefix`` selects one sub-tree: a non-empty str. ``strip_prefix``: see
    :func:`strip_prefixes`. ``rename``: (regex, replacement) pairs or a callable. ``keys``:
    see :func:`key_selector`.
    """
    if keys is not None:
        key_selector(keys)  # type: ignore[arg-type]
    if prefix is not None and (not isinstance(prefix, str) or not prefix):
        raise InvalidArgumentError(
            f"prefix={prefix!r} is not a prefix: pass one non-empty str such as 'backbone.' "
            "(the sub-tree of the checkpoint to load)"
        )
    if strip_prefix is not None:
        strip_prefixes(strip_prefix)  # type: ignore[arg-type]
    if rename is not None and not callable(rename):
        _rename_pairs(rename)  # type: ignore[arg-type]


def _renamer(rename: Rename) -> list[tuple[str, Callable[[str], str]]]:
    """Each rename rule as (description, function on one name)."""
    if callable(rename):
        label = getattr(rename, "__name__", type(rename).__name__)
        return [(f"rename with {label}()", rename)]
    rules: list[tuple[str, Callable[[str], str]]] = []
    for pattern, replacement in _rename_pairs(rename):
        try:
            compiled = re.compile(pattern)
        except re.error as exc:
            raise KeyMappingError(
                f"rename pattern {pattern!r} is not a valid regex: {exc}"
            ) from None

        def substitute(
            name: str, compiled: re.Pattern[str] = compiled, repl: str = replacement
        ) -> str:
            return compiled.sub(repl, name)

        rules.append((f"rename {pattern!r} -> {replacement!r}", substitute))
    return rules


def map_keys(
    checkpoint_keys: Sequence[str],
    model_keys: Collection[str],
    *,
    prefix: str | None = None,
    strip_prefix: Prefixes | None = None,
    rename: Rename | None = None,
    auto_fix: bool = True,
    keys: KeySelection | None = None,
) -> KeyMap:
    """Map checkpoint keys into the model's namespace (see the module docstring for the steps)."""
    check_name_options(prefix=prefix, strip_prefix=strip_prefix, rename=rename, keys=keys)
    mapper = _Mapper(checkpoint_keys)
    if auto_fix:
        _unwrap_checkpoint(mapper, model_keys)
    ignored: list[str] = []
    if prefix is not None:
        kept = [i for i, name in enumerate(mapper.current) if name.startswith(prefix)]
        kept_set = set(kept)
        ignored = [mapper.originals[i] for i in range(len(mapper.current)) if i not in kept_set]
        mapper.originals = [mapper.originals[i] for i in kept]
        mapper.current = [mapper.current[i] for i in kept]
        mapper.apply(
            f"select prefix {prefix!r}",
            "only this sub-tree is loaded, without the prefix",
            [name.removeprefix(prefix) for name in mapper.current],
        )
    if strip_prefix is not None:
        strip = strip_prefixes(strip_prefix)
        mapper.apply(
            f"strip prefix {strip[0]!r}" if len(strip) == 1 else f"strip prefixes {list(strip)!r}",
            "from the keys that have it",
            [_without_prefix(name, strip) for name in mapper.current],
        )
    if rename is not None:
        for rule, function in _renamer(rename):
            new = [function(name) for name in mapper.current]
            bad = next((i for i, n in enumerate(new) if not isinstance(n, str)), None)
            if bad is not None:
                raise InvalidArgumentError(
                    f"rename=: {rule} returned {new[bad]!r} for {mapper.current[bad]!r}; "
                    "a rename function must return a str"
                )
            mapper.apply(rule, "rename", new)
    if auto_fix:
        _wrap_for_model(mapper, model_keys)
    if keys is not None:
        wanted = key_selector(keys)
        kept = [i for i, name in enumerate(mapper.current) if wanted(name)]
        kept_set = set(kept)
        ignored += [mapper.originals[i] for i in range(len(mapper.current)) if i not in kept_set]
        mapper.originals = [mapper.originals[i] for i in kept]
        mapper.current = [mapper.current[i] for i in kept]
    return KeyMap(
        pairs=dict(zip(mapper.current, mapper.originals, strict=True)),
        ignored=tuple(ignored),
        applied=tuple(mapper.applied),
        notes=tuple(mapper.notes),
    )
