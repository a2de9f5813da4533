"""The HTML report: one self-contained page (Jinja2 template, inlined uPlot and d3-hierarchy).

Imported by :mod:`statevault.tools.report_page`; see :mod:`statevault.reports.html.page`.
"""

from __future__ import annotations

from statevault.reports.html.page import Comparison, page_data, render_page

__all__ = ["Comparison", "page_data", "render_page"]
