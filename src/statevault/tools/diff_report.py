"""The result of diff(): what differs between two checkpoints, as text and as JSON.

Frozen values only, no I/O. May be imported by: ``statevault.tools`` and the public
package.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from statevault.reports.display import shown, shown_value
from statevault.reports.load_report import MAX_LISTED


@dataclass(frozen=True)
class TensorDelta:
    """How one tensor present in both files, with the same shape, differs."""

    name: str
    shape: tuple[int, ...]
    dtype_a: str
    dtype_b: str
    mismatched: int  # elements outside the tolerance
    max_abs: float | None  # None when compared bit for bit
    rel_l2: float | None  # ||a - b|| / ||b||

    @property
    def ok(self) -> bool:
        """No element outside the tolerance (the one verdict name of every report)."""
        return self.mismatched == 0

    def __str__(self) -> str:
        numel = math.prod(self.shape)
        text = f"{shown(self.name)}: {self.mismatched:,} of {numel:,} element(s) differ"
        if self.max_abs is not None:
            text += f", max abs {self.max_abs:.6g}, rel L2 {self.rel_l2:.6g}"
        return text


@dataclass(frozen=True)
class DiffReport:
    """Everything diff found; ``ok`` (nothing differs) is what the exit code reports."""

    a: str
    b: str
    atol: float
    rtol: float
    only_a: tuple[str, ...] = ()
    only_b: tuple[str, ...] = ()
    shape_changes: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...] = ()
    dtype_changes: tuple[tuple[str, str, str], ...] = ()
    tensors: tuple[TensorDelta, ...] = ()  # every compared tensor, equal or not
    state_changes: tuple[tuple[str, Any, Any], ...] = ()  # (path, value in A, value in B)

    @property
    def different(self) -> tuple[TensorDelta, ...]:
        return tuple(t for t in self.tensors if not t.ok)

    @property
    def ok(self) -> bool:
        return not (
            self.only_a
            or self.only_b
            or self.shape_changes
            or self.dtype_changes
            or self.state_changes
            or self.different
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "ok": self.ok,
            "atol": self.atol,
            "rtol": self.rtol,
            "only_a": list(self.only_a),
            "only_b": list(self.only_b),
            "shape_changes": [
                {"name": n, "a": list(sa), "b": list(sb)} for n, sa, sb in self.shape_changes
            ],
            "dtype_changes": [{"name": n, "a": da, "b": db} for n, da, db in self.dtype_changes],
            "state_changes": [
                {"path": p, "a": _json_value(va), "b": _json_value(vb)}
                for p, va, vb in self.state_changes
            ],
            "tensors": [
                {
                    "name": t.name,
                    "ok": t.ok,
                    "mismatched": t.mismatched,
                    "numel": math.prod(t.shape),
                    "max_abs": _json_float(t.max_abs),
                    "rel_l2": _json_float(t.rel_l2),
                }
                for t in self.tensors
            ],
        }

    def __str__(self) -> str:
        a, b = shown(self.a), shown(self.b)
        if self.ok:
            return (
                f"{a} and {b} are equal: {len(self.tensors)} tensor(s) compared "
                f"(atol={self.atol:g}, rtol={self.rtol:g})"
            )
        lines = [f"{a} and {b} differ:"]
        # each list is capped before its lines are made: a 200k-key diff formats 20 of them
        sections: list[tuple[str, Sequence[Any], Callable[[Any], str]]] = [
            ("Only in A", self.only_a, shown),
            ("Only in B", self.only_b, shown),
            ("Shape changes", self.shape_changes, _shape_line),
            ("Dtype changes", self.dtype_changes, lambda c: f"{shown(c[0])}: {c[1]} -> {c[2]}"),
            ("Values differ", self.different, str),
            ("State changes", self.state_changes, _state_line),
        ]
        for title, items, line in sections:
            if items:
                lines.append(f"{title} ({len(items)}):")
                lines += [f"  {line(item)}" for item in items[:MAX_LISTED]]
                if len(items) > MAX_LISTED:
                    lines.append(f"  ... and {len(items) - MAX_LISTED} more")
        return "\n".join(lines)


def _shape_line(change: tuple[str, tuple[int, ...], tuple[int, ...]]) -> str:
    return f"{shown(change[0])}: {list(change[1])} -> {list(change[2])}"


def _state_line(change: tuple[str, Any, Any]) -> str:
    return f"{shown(change[0])}: {shown_value(change[1])} -> {shown_value(change[2])}"


def _json_value(value: Any) -> Any:
    return _json_float(value) if isinstance(value, float) else value


def _json_float(value: float | None) -> float | str | None:
    if value is None or math.isfinite(value):
        return value
    return str(value)  # "inf" / "nan": keep --json output valid JSON
