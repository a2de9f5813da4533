"""The HTML report in a real browser: headless Debian chromium driven by Playwright.

Each view is drawn, its numbers read back from the DOM and checked against ``stats``;
sorting, filtering and the keyboard are exercised; every request the page makes is
intercepted (only the file itself may load) and any console message of type error fails
the test. A screenshot of each view goes to ``$STATEVAULT_TEST_ARTIFACTS`` (else a temporary
folder); the folder is printed. Skips, saying what is missing, without playwright or chromium.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

import statevault
from helpers.report_samples import HOSTILE, HOSTILE_META, save_hostile, save_layered
from statevault.reports.html import page_data
from statevault.reports.stats_report import StatsReport, human_number
from statevault.tools.report_page import html_report

CHROMIUM = Path(os.environ.get("STATEVAULT_CHROMIUM", "/usr/bin/chromium"))
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("browser tests need the Python package playwright (in the dev extras)")
    if not CHROMIUM.exists():
        pytest.skip(f"browser tests need chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),  # a fresh --user-data-dir
            executable_path=str(CHROMIUM),
            headless=True,
            args=FLAGS,
            viewport={"width": 1280, "height": 900},
        )
        yield context
        context.close()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("STATEVAULT_TEST_ARTIFACTS") or tmp_path_factory.mktemp("shots"))
    folder = folder / "html-report"
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots of the HTML report: {folder}")
    return folder


@dataclass
class Opened:
    page: Any
    url: str
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def assert_clean(self) -> None:
        assert self.requests == [self.url], self.requests  # nothing but the file itself
        assert self.errors == [], self.errors
        assert self.dialogs == [], self.dialogs  # no alert() ran


def open_page(browser: Any, path: Path, *, dark: bool = False) -> Opened:
    page = browser.new_page()
    opened = Opened(page, path.resolve().as_uri())

    def route(request_route: Any) -> None:
        opened.requests.append(request_route.request.url)
        if request_route.request.url == opened.url:
            request_route.continue_()
        else:
            request_route.abort()

    page.route("**/*", route)
    page.on("console", lambda m: m.type == "error" and opened.errors.append(m.text))
    page.on("pageerror", lambda exc: opened.errors.append(str(exc)))
    page.on("dialog", lambda d: (opened.dialogs.append(d.message), d.dismiss()))
    page.emulate_media(color_scheme="dark" if dark else "light")
    page.goto(opened.url)
    page.wait_for_selector("#summary .card")
    return opened


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The checkpoints, their stats and the pages (made once for the module)."""
    folder = tmp_path_factory.mktemp("reports")
    a = save_layered(folder, "a.safetensors")
    b = save_layered(
        folder,
        "b.safetensors",
        **{
            "blocks.2.attn.qkv.weight": torch.zeros(48, 16),  # ||A - B|| / ||B||: B is 0 -> inf
            "blocks.4.mlp.down.weight": torch.randn(16, 64) * 1e-3,
            "head.weight": torch.randn(10, 16),
            "embed.weight": torch.randn(64, 8),  # a shape change
            "extra.bias": torch.ones(3),  # only in B
        },
    )
    hostile = save_hostile(folder)
    pages = {}
    for name, source, other in (("a", a, None), ("diff", a, b), ("hostile", hostile, None)):
        pages[name] = folder / f"{name}.html"
        pages[name].write_text(html_report(source, compare_to=other), encoding="utf-8")
    return {"a": a, "b": b, "stats": statevault.stats(a, histogram_bins=32), "pages": pages}


def test_overview_treemap_cards_and_flags(
    browser: Any, made: dict[str, Any], artifacts: Path
) -> None:
    report: StatsReport = made["stats"]
    opened = open_page(browser, made["pages"]["a"])
    page = opened.page
    tiles = page.eval_on_selector_all(
        "#treemap .tile", "ts => ts.map(t => [t.dataset.name, Number(t.dataset.bytes)])"
    )
    assert sorted(map(tuple, tiles)) == sorted((t.name, t.nbytes) for t in report.tensors)
    areas = page.eval_on_selector_all(
        "#treemap .tile",
        "ts => ts.map(t => [Number(t.dataset.bytes), t.offsetWidth * t.offsetHeight])",
    )
    assert max(areas, key=lambda pair: pair[1])[0] == max(t.nbytes for t in report.tensors)
    assert page.text_content("#card-tensors .value") == str(len(report.tensors))
    assert page.text_content("#card-damaged .value") == str(sum(t.damaged for t in report.tensors))
    legend = page.eval_on_selector_all(
        "#treemap-legend [data-dtype]", "s => s.map(x => x.dataset.dtype)"
    )
    assert sorted(legend) == ["bfloat16", "float32"]
    flags = page.text_content("#flag-list")
    for t in report.flagged:
        for flag in t.flags:
            assert flag.reason in flags
    assert page.text_content("#verdict").startswith("DAMAGED: 1 of")
    page.screenshot(path=str(artifacts / "overview.png"), full_page=True)
    page.click("#treemap .module-label >> nth=0")  # a module filters the table
    prefix = page.input_value("#filter")
    names = page.eval_on_selector_all("#tensor-body td.name", "cs => cs.map(c => c.textContent)")
    assert names and all(name.startswith(prefix) for name in names)
    opened.assert_clean()


def test_table_numbers_sorting_and_filtering(
    browser: Any, made: dict[str, Any], artifacts: Path
) -> None:
    report: StatsReport = made["stats"]
    opened = open_page(browser, made["pages"]["a"])
    page = opened.page
    page.click("#tab-tensors")
    rows = page.eval_on_selector_all(
        "#tensor-body tr", "rs => rs.map(r => Array.from(r.cells, c => c.textContent))"
    )
    assert len(rows) == len(report.tensors)
    shown = {row[0]: row for row in rows}
    for t in report.tensors:
        row = shown[t.name]
        expected = [
            human_number(float(f"{v:.6g}")) if v is not None else ""
            for v in (t.minimum, t.maximum, t.mean, t.std, t.norm)
        ]
        assert row[4:9] == expected, t.name
        assert row[1] == t.dtype and row[11] == ", ".join(f.kind for f in t.flags)
    page.click("th[data-key=norm] button")
    page.click("th[data-key=norm] button")  # second click: descending
    assert page.get_attribute("th[data-key=norm]", "aria-sort") == "descending"
    first = page.text_content("#tensor-body tr:first-child td.name")
    assert first == max(report.tensors, key=lambda t: t.norm or 0).name
    page.fill("#filter", "blocks.1.")
    names = page.eval_on_selector_all("#tensor-body td.name", "cs => cs.map(c => c.textContent)")
    assert sorted(names) == sorted(t.name for t in report.tensors if "blocks.1." in t.name)
    assert page.text_content("#row-count").startswith(f"{len(names)} of {len(report.tensors)}")
    page.fill("#filter", "")
    page.check("#only-flagged")
    flagged = page.eval_on_selector_all("#tensor-body td.name", "cs => cs.map(c => c.textContent)")
    assert sorted(flagged) == sorted(t.name for t in report.flagged)
    page.screenshot(path=str(artifacts / "tensors.png"), full_page=True)
    opened.assert_clean()


def test_keyboard_moves_between_views_and_opens_histograms(
    browser: Any, made: dict[str, Any], artifacts: Path
) -> None:
    report: StatsReport = made["stats"]
    opened = open_page(browser, made["pages"]["a"])
    page = opened.page
    page.focus("#tab-overview")
    page.keyboard.press("ArrowRight")
    assert page.evaluate("document.activeElement.id") == "tab-tensors"
    assert page.is_visible("#view-tensors") and not page.is_visible("#view-overview")
    page.keyboard.press("End")
    assert page.evaluate("document.activeElement.id") == "tab-metadata"
    page.keyboard.press("Home")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("Tab")  # into the panel, then to the filter box
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "filter"
    page.keyboard.type("blocks.0.attn")
    page.keyboard.press("Tab")  # the flagged-only box
    page.keyboard.press("Tab")  # the first sort button
    page.keyboard.press("Enter")
    assert page.get_attribute("th[data-key=name]", "aria-sort") == "ascending"
    page.focus("#tensor-body button.linklike")
    page.keyboard.press("Enter")
    assert page.is_visible("#hist-dialog")
    name = "model.blocks.0.attn.qkv.weight"
    assert page.text_content("#hist-title") == name
    counts = page.eval_on_selector_all(
        "#hist-table tbody tr",
        "rs => rs.map(r => Number(r.cells[2].textContent.replace(/,/g, '')))",
    )
    expected = next(t for t in report.tensors if t.name == name).histogram
    assert expected is not None and counts == list(expected.counts)
    plotted = page.evaluate("statevaultReport.histogram().data[1]")
    assert plotted == list(expected.counts)
    page.screenshot(path=str(artifacts / "histogram.png"))
    page.keyboard.press("Escape")
    assert not page.is_visible("#hist-dialog")
    opened.assert_clean()


def test_depth_plots_draw_the_series(browser: Any, made: dict[str, Any], artifacts: Path) -> None:
    opened = open_page(browser, made["pages"]["a"])
    page = opened.page
    page.click("#tab-depth")
    expected = page_data(made["stats"])["depth"]
    data = page.evaluate("statevaultReport.plots.norm.data")
    assert data[0] == expected["depths"]
    assert data[1:] == [s["norm"] for s in expected["series"]]
    labels = page.eval_on_selector_all(
        "#plot-norm .u-legend .u-label", "ls => ls.map(l => l.textContent)"
    )
    assert labels[1:] == [s["type"] for s in expected["series"]]
    inked = page.evaluate(
        """() => { const c = document.querySelector('#plot-std canvas');
        const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 3; i < px.length; i += 4) n += px[i] > 0; return n; }"""
    )
    assert inked > 1000  # lines and axes were drawn, not an empty canvas
    page.click("#view-depth summary")
    cells = page.eval_on_selector_all(
        "#depth-table tbody tr:first-child td", "cs => cs.map(c => c.textContent)"
    )
    first = expected["series"][0]
    assert cells == [first["type"], "norm", *(human_number(v) for v in first["norm"])]
    page.screenshot(path=str(artifacts / "depth.png"), full_page=True)
    opened.assert_clean()


def test_metadata_and_hostile_names_show_as_text(
    browser: Any, made: dict[str, Any], artifacts: Path
) -> None:
    opened = open_page(browser, made["pages"]["hostile"])
    page = opened.page
    assert page.evaluate("document.scripts.length") == 4  # data + uPlot + d3 + ours
    page.click("#tab-tensors")
    names = page.eval_on_selector_all("#tensor-body td.name", "cs => cs.map(c => c.textContent)")
    assert sorted(names) == sorted([HOSTILE, "</script>", "ok"])
    page.click("#tab-metadata")
    cells = page.eval_on_selector_all("#metadata-table td", "cs => cs.map(c => c.textContent)")
    assert HOSTILE in cells and HOSTILE_META in cells
    page.screenshot(path=str(artifacts / "metadata-hostile.png"), full_page=True)
    opened.assert_clean()

    layered = open_page(browser, made["pages"]["a"])
    layered.page.click("#tab-metadata")
    state = layered.page.eval_on_selector_all("#state-table tr", "rs => rs.map(r => r.textContent)")
    assert any("epoch" in row and "7" in row for row in state)
    layered.page.screenshot(path=str(artifacts / "metadata.png"), full_page=True)
    layered.assert_clean()


def test_diff_view_heatmap_and_structure(
    browser: Any, made: dict[str, Any], artifacts: Path
) -> None:
    expected = statevault.diff(made["a"], made["b"])
    opened = open_page(browser, made["pages"]["diff"])
    page = opened.page
    page.click("#tab-diff")
    cells = dict(
        page.eval_on_selector_all(
            "#heatmap-grid .cell[data-name]", "cs => cs.map(c => [c.dataset.name, c.dataset.rel])"
        )
    )
    for t in expected.tensors:
        if ".blocks." in t.name:
            rel = 0.0 if t.ok else t.rel_l2
            assert rel is not None
            shown = cells[t.name]
            assert shown == "inf" if rel == float("inf") else float(shown) == float(f"{rel:.6g}"), (
                t.name
            )
    assert cells["model.blocks.2.attn.qkv.weight"] == "inf"  # B is all zeros
    assert float(cells["model.blocks.1.attn.qkv.weight"]) == 0
    only_b = page.eval_on_selector_all("#only-b li", "ls => ls.map(l => l.textContent)")
    assert only_b == ["model.extra.bias"] == list(expected.only_b)
    assert "model.embed.weight: [64, 16] → [64, 8]" in page.text_content("#shape-changes")
    others = page.text_content("#diff-other-table")
    assert "model.head.weight" in others
    page.screenshot(path=str(artifacts / "diff.png"), full_page=True)
    opened.assert_clean()


def test_dark_mode_is_readable(browser: Any, made: dict[str, Any], artifacts: Path) -> None:
    opened = open_page(browser, made["pages"]["diff"], dark=True)
    page = opened.page
    colours = page.evaluate(
        "[getComputedStyle(document.body).backgroundColor, getComputedStyle(document.body).color]"
    )
    assert colours == ["rgb(13, 17, 23)", "rgb(230, 237, 243)"]
    page.screenshot(path=str(artifacts / "overview-dark.png"), full_page=True)
    page.click("#tab-diff")
    page.screenshot(path=str(artifacts / "diff-dark.png"), full_page=True)
    opened.assert_clean()


def test_the_page_formats_numbers_as_the_terminal_does(browser: Any, made: dict[str, Any]) -> None:
    values = [
        0.0,
        -0.0,
        1.0,
        -3.0625,
        1e-3,
        0.00099996,
        9999.5,
        99995.0,
        38734.48,
        3.4e-5,
        -2.5e-10,
    ]
    values += [1.5e308, 5e-324, 3.3895313892515355e38, 65504.0, 0.1, 1 / 3, -1234.5, 12.345]
    generator = torch.Generator().manual_seed(0)
    values += (
        torch.randn(200, generator=generator, dtype=torch.float64)
        * 10.0 ** torch.randint(-12, 12, (200,), generator=generator)
    ).tolist()
    opened = open_page(browser, made["pages"]["a"])
    shown = opened.page.evaluate("vs => vs.map(statevaultReport.fmtNum)", values)
    assert shown == [human_number(v) for v in values]
    opened.assert_clean()
