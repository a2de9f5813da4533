"""One self-contained HTML page from a :class:`StatsReport` (and optionally a comparison).

Jinja2 renders the page with autoescaping on; the numbers travel as one JSON document in a
``<script type="application/json">`` (Jinja's ``tojson`` escapes ``<``, ``>``, ``&`` and
``'``, so no name can close the script or open a comment); the page's own script and the
vendored libraries (uPlot for plots, d3-hierarchy for the treemap layout) are inlined. A
Content-Security-Policy admits only those inline scripts, by hash, and no connection of
any kind, so the page cannot load or send anything even if a name got through. Tensor
names, metadata and state reach the DOM only as text (``textContent`` or autoescaped).
"""

from __future__ import annotations

import base64
import hashlib
import json
import statistics
from dataclasses import dataclass
from importlib import resources
from typing import Any

import jinja2

from statevault.reports.stats_report import (
    StatsReport,
    TensorStats,
    json_number,
    layer_position,
    natural_key,
)

MAX_DEPTH_SERIES = 8  # layer types drawn along depth (the most common ones)
_PACKAGE = "statevault.reports.html"


@dataclass(frozen=True)
class Comparison:
    """What the diff view shows: ``A`` is the report's checkpoint, ``B`` the other one.

    ``changes`` maps every tensor in both with the same shape to ``||A - B|| / ||B||``
    (None when it was compared bit for bit: no arithmetic for its dtype).
    """

    other: str
    changes: dict[str, float | None]
    only_a: tuple[str, ...] = ()
    only_b: tuple[str, ...] = ()
    shape_changes: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...] = ()
    dtype_changes: tuple[tuple[str, str, str], ...] = ()
    state_changes: tuple[tuple[str, str, str], ...] = ()  # (path, A shown, B shown)


def _short(value: float | None) -> float | str | None:
    """Six significant digits: what a person reads, a third of the bytes of ``repr``."""
    number = json_number(value)
    return float(f"{number:.6g}") if isinstance(number, float) else number


def _row(t: TensorStats, types: dict[str, int]) -> list[Any]:
    kind, depth = layer_position(t.name)
    return [
        t.name,
        t.dtype,
        list(t.shape),
        t.nbytes,
        *(_short(v) for v in (t.minimum, t.maximum, t.mean, t.std, t.norm)),
        _short(t.zero_fraction),
        t.nan,
        t.posinf + t.neginf,
        [[f.kind, f.severity, f.reason] for f in t.flags],
        types.setdefault(kind, len(types)) if depth is not None else None,
        depth,
    ]


COLUMNS = [
    "name", "dtype", "shape", "nbytes", "min", "max", "mean", "std", "norm", "zeros", "nan",
    "inf", "flags", "type", "depth",
]  # fmt: skip


def depth_series(tensors: tuple[TensorStats, ...]) -> dict[str, Any]:
    """Norm and std along depth for the most common layer types (median where several)."""
    cells: dict[str, dict[int, list[TensorStats]]] = {}
    for t in tensors:
        kind, depth = layer_position(t.name)
        if depth is not None and t.norm:  # a log plot has no place for 0 (all-zero biases)
            cells.setdefault(kind, {}).setdefault(depth, []).append(t)
    kinds = sorted(
        (k for k, by_depth in cells.items() if len(by_depth) >= 2),
        key=lambda k: (-len(cells[k]), natural_key(k)),
    )[:MAX_DEPTH_SERIES]
    depths = sorted({d for k in kinds for d in cells[k]})

    def line(kind: str, field: str) -> list[float | str | None]:
        by_depth = cells[kind]
        return [
            _short(statistics.median(getattr(t, field) for t in by_depth[d]))
            if d in by_depth
            else None
            for d in depths
        ]

    return {
        "depths": depths,
        "series": [
            {"type": k, "norm": line(k, "norm"), "std": line(k, "std")}
            for k in sorted(kinds, key=natural_key)
        ],
    }


def page_data(report: StatsReport, comparison: Comparison | None = None) -> dict[str, Any]:
    """Everything the page's script draws, as plain JSON-able data."""
    types: dict[str, int] = {}
    rows = [_row(t, types) for t in report.tensors]
    histograms = {
        i: [_short(t.histogram.low), _short(t.histogram.high), list(t.histogram.counts)]
        for i, t in enumerate(report.tensors)
        if t.histogram is not None
    }
    data: dict[str, Any] = {
        "path": report.path,
        "kind": report.kind,
        "damaged": report.damaged,
        "checksummed": report.checksummed,
        "columns": COLUMNS,
        "rows": rows,
        "types": list(types),
        "histograms": {str(i): h for i, h in histograms.items()},
        "depth": depth_series(report.tensors),
    }
    if comparison is not None:
        data["diff"] = {
            "other": comparison.other,
            "changes": [
                [name, _short(rel), *layer_position(name)]
                for name, rel in sorted(comparison.changes.items(), key=lambda x: natural_key(x[0]))
            ],
            "only_a": list(comparison.only_a),
            "only_b": list(comparison.only_b),
            "shape_changes": [[n, list(a), list(b)] for n, a, b in comparison.shape_changes],
            "dtype_changes": [list(change) for change in comparison.dtype_changes],
            "state_changes": [list(change) for change in comparison.state_changes],
        }
    return data


def _asset(folder: str, name: str) -> str:
    return (resources.files(_PACKAGE) / folder / name).read_text(encoding="utf-8")


def _csp_hash(script: str) -> str:
    digest = hashlib.sha256(script.encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode('ascii')}'"


def _state_rows(state: Any, path: str = "") -> list[tuple[str, str]]:
    """Non-tensor state as ``(dotted path, JSON text)`` rows, one per leaf."""
    if isinstance(state, dict):
        return [
            row
            for key, value in state.items()
            for row in _state_rows(value, f"{path}.{key}" if path else str(key))
        ]
    return [(path or "<root>", json.dumps(state, ensure_ascii=False))]


def render_page(report: StatsReport, comparison: Comparison | None = None) -> str:
    """The report as one HTML document (a string); nothing in it reaches the network."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader(_PACKAGE, "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.policies["json.dumps_kwargs"] = {"allow_nan": False, "separators": (",", ":")}
    scripts = [
        _asset("vendor", "uPlot.iife.min.js"),
        _asset("vendor", "d3-hierarchy.min.js"),
        _asset("assets", "report.js"),
    ]
    return env.get_template("report.html.j2").render(
        report=report,
        comparison=comparison,
        data=page_data(report, comparison),
        metadata=sorted(report.metadata.items()),
        state=_state_rows(report.state) if report.state is not None else [],
        styles=[_asset("vendor", "uPlot.min.css"), _asset("assets", "report.css")],
        scripts=scripts,
        script_hashes=" ".join(_csp_hash(script) for script in scripts),
    )
