"""html_report(): a checkpoint's statistics (and its diff with another) as one HTML page.

Runs :func:`statevault.tools.tensor_stats.stats` with histograms, and
:func:`statevault.tools.diffing.diff` when there is a second checkpoint, and hands the
results to the renderer in :mod:`statevault.reports.html`. Used by ``statevault report``.
"""

from __future__ import annotations

import json
import os

from statevault.engine.fsspec_storage import StorageOptions, is_url
from statevault.engine.progress import Progress
from statevault.reports.display import VALUE_CHARS, shown
from statevault.reports.html import Comparison, render_page
from statevault.tools.diff_report import DiffReport
from statevault.tools.diffing import diff
from statevault.tools.tensor_stats import stats

HISTOGRAM_BINS = 32


def _value(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return shown(text, limit=VALUE_CHARS)


def comparison_of(report: DiffReport) -> Comparison:
    """The parts of a diff the page shows."""
    return Comparison(
        other=report.b,
        changes={t.name: (0.0 if t.ok else t.rel_l2) for t in report.tensors},
        only_a=report.only_a,
        only_b=report.only_b,
        shape_changes=report.shape_changes,
        dtype_changes=report.dtype_changes,
        state_changes=tuple((p, _value(a), _value(b)) for p, a, b in report.state_changes),
    )


def html_report(
    source: str | os.PathLike[str],
    *,
    compare_to: str | os.PathLike[str] | None = None,
    histogram_bins: int = HISTOGRAM_BINS,
    progress: Progress | None = None,
    storage_options: StorageOptions | None = None,
) -> str:
    """The HTML report of ``source`` (compared with ``compare_to`` when given), as one string.

    The page needs no network: scripts, styles and data are inlined. ``progress`` hears
    the statistics pass (the diff, when asked for, runs after it). ``storage_options``
    (passed to fsspec) serves whichever of the two is a URL.
    """
    options = storage_options
    own = options if is_url(source) else None  # with a URL to compare to, source may be local
    report = stats(source, histogram_bins=histogram_bins, progress=progress, storage_options=own)
    comparison = (
        comparison_of(diff(source, compare_to, storage_options=options))
        if compare_to is not None
        else None
    )
    return render_page(report, comparison)
