"""LoadReport: everything load_into found, as data (``str()`` for people, ``to_dict()`` for programs)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

MAX_LISTED = 20


@dataclass(frozen=True)
class ShapeMismatch:
    key: str
    checkpoint_shape: tuple[int, ...]
    model_shape: tuple[int, ...]

    def __str__(self) -> str:
        return f"{self.key}: checkpoint {list(self.checkpoint_shape)} vs model {list(self.model_shape)}"


@dataclass(frozen=True)
class DtypeCast:
    key: str
    checkpoint_dtype: str
    model_dtype: str

    def __str__(self) -> str:
        return f"{self.key}: {self.checkpoint_dtype} -> {self.model_dtype}"


def capped(items: Sequence[Any], limit: int = MAX_LISTED) -> list[str]:
    """At most ``limit`` items as text, then one '... and N more' line."""
    lines = [str(item) for item in items[:limit]]
    if len(items) > limit:
        lines.append(f"... and {len(items) - limit} more")
    return lines


@dataclass(frozen=True)
class LoadReport:
    """What happened (or would happen) when loading a checkpoint into a module.

    ``ok`` is True when every model key was filled and every checkpoint key was used.
    ``missing_keys`` / ``unexpected_keys`` mirror torch's ``load_state_dict`` result.
    """

    source: str
    matched: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    shape_mismatches: tuple[ShapeMismatch, ...] = ()
    casts: tuple[DtypeCast, ...] = ()
    tied: tuple[tuple[str, str], ...] = ()  # (key, key it shares memory with)
    notes: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.shape_mismatches)

    @property
    def missing_keys(self) -> list[str]:
        return list(self.missing)

    @property
    def unexpected_keys(self) -> list[str]:
        return list(self.unexpected)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        return data

    def problem_lines(self) -> list[str]:
        lines: list[str] = []
        if self.missing:
            lines.append(f"Missing from checkpoint ({len(self.missing)}):")
            lines += [f"  {k}" for k in capped(self.missing)]
        if self.unexpected:
            lines.append(f"Unexpected in checkpoint ({len(self.unexpected)}):")
            lines += [f"  {k}" for k in capped(self.unexpected)]
        if self.shape_mismatches:
            lines.append(f"Shape mismatches ({len(self.shape_mismatches)}):")
            lines += [f"  {m}" for m in capped(self.shape_mismatches)]
        return lines

    def __str__(self) -> str:
        lines = [f"Loaded {len(self.matched)} tensor(s) from {self.source}"]
        if self.ok:
            lines[0] += ": all keys matched successfully"
        lines += self.problem_lines()
        if self.casts:
            lines.append(f"Dtype casts ({len(self.casts)}):")
            lines += [f"  {c}" for c in capped(self.casts)]
        if self.tied:
            lines.append(
                "Tied tensors: " + ", ".join(f"{a} = {b}" for a, b in self.tied[:MAX_LISTED])
            )
        lines += list(self.notes)
        return "\n".join(lines)
