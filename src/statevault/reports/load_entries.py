"""The entries a LoadReport lists: frozen values, and the closed sets of states they take.

Kept apart from the code that finds them (``statevault.loading``) so that reports never
import loading: loading builds these values, reports only render them. States compared by
code (a tie's status, a cause's kind) are ``StrEnum`` members, so they still read and
serialise as their plain names ("filled through tie", "first_dim").

May import: ``statevault.errors`` only. Imported by ``reports.load_report``, ``loading`` and
the public package.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum


@dataclass(frozen=True)
class ShapeMismatch:
    """A key present on both sides with different shapes; it is never loaded."""

    key: str
    checkpoint_shape: tuple[int, ...]
    model_shape: tuple[int, ...]

    def __str__(self) -> str:
        return f"{self.key}: checkpoint {list(self.checkpoint_shape)} vs model {list(self.model_shape)}"


@dataclass(frozen=True)
class DtypeCast:
    """A tensor converted on load from the checkpoint's dtype to the model's."""

    key: str
    checkpoint_dtype: str
    model_dtype: str

    def __str__(self) -> str:
        return f"{self.key}: {self.checkpoint_dtype} -> {self.model_dtype}"


class TieStatus(StrEnum):
    """How a model key tied to another one was filled."""

    SHARED = "shared"  # tied in the checkpoint too: read once
    FILLED_THROUGH_TIE = "filled through tie"  # absent from the checkpoint, filled by the tie
    STORED_SEPARATELY = "stored separately"  # both stored: the later key's values win

    @property
    def explanation(self) -> str:
        return _TIE_EXPLANATIONS[self]


_TIE_EXPLANATIONS = {
    TieStatus.SHARED: "tied in the checkpoint too; read once",
    TieStatus.FILLED_THROUGH_TIE: "absent from the checkpoint; filled through the tie",
    TieStatus.STORED_SEPARATELY: "the checkpoint stores both; the later key's values win",
}


@dataclass(frozen=True)
class TiedKey:
    """A model key that shares memory with another one, and how it was filled."""

    key: str
    tied_to: str
    how: TieStatus

    def __str__(self) -> str:
        return f"{self.key} = {self.tied_to} ({self.how.explanation})"


class CauseKind(StrEnum):
    """What a diagnosis found; docs/loading.md has a row (and a printed fix) for each."""

    OPTIMIZER_STATE = "optimizer_state"
    EMPTY_SELECTION = "empty_selection"
    WRAPPER_PREFIX = "wrapper_prefix"
    MODEL_WRAPPED = "model_wrapped"
    WRAPPER_NAMES = "wrapper_names"
    LARGER_CHECKPOINT = "larger_checkpoint"
    SMALLER_CHECKPOINT = "smaller_checkpoint"
    RENAMED = "renamed"
    NON_PERSISTENT_BUFFER = "non_persistent_buffer"
    MISSING_BUFFERS = "missing_buffers"
    NEW_HEAD = "new_head"
    FIRST_DIM = "first_dim"
    SHAPE = "shape"
    TRANSPOSED = "transposed"
    RESHAPED = "reshaped"


@dataclass(frozen=True)
class Cause:
    """A likely reason for the mismatch, and what to do about it.

    ``fix`` is what to do, for people; ``code`` is the exact Python it prints, the corrected
    call for the entry point that was used (``model``/``source`` stand for its arguments when
    they are not literals). When the fix changes that call's options, ``options`` holds the
    new ones; when it loads into a submodule instead, ``submodule`` is its attribute path.
    """

    kind: CauseKind
    summary: str
    fix: str
    options: Mapping[str, object] = field(default_factory=dict, hash=False)  # keeps it hashable
    submodule: str = ""
    code: str = ""

    def __str__(self) -> str:
        return f"{self.summary}\n  Fix: {self.fix}"


@dataclass(frozen=True)
class AppliedMapping:
    """One renaming step that changed at least one key, with an example of what it did."""

    rule: str
    reason: str
    count: int
    example: tuple[str, str]  # (checkpoint key, name it was matched under)
    automatic: bool = False

    def __str__(self) -> str:
        before, after = self.example
        how = "auto_fix" if self.automatic else "you asked"
        return f"{self.rule} ({self.reason}; {how}): {self.count} key(s), e.g. {before} -> {after}"
