"""The HTML page as text: escaped names, safe embedded JSON, inline-only scripts, size."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path

import torch

import statevault
from helpers.report_samples import HOSTILE, HOSTILE_META, save_hostile, save_layered
from statevault.reports.html import Comparison, page_data, render_page
from statevault.tools.report_page import html_report

SCRIPT = re.compile(r"<script([^>]*)>(.*?)</script>", re.S)


def scripts(page: str) -> list[tuple[str, str]]:
    return SCRIPT.findall(page)


def test_hostile_names_and_metadata_never_appear_as_markup(tmp_path: Path) -> None:
    page = html_report(save_hostile(tmp_path))
    found = scripts(page)
    # the data block and the three inlined scripts: no script a name could have opened
    assert [attrs for attrs, _ in found] == [
        ' type="application/json" id="report-data"',
        "",
        "",
        "",
    ]
    assert HOSTILE not in page and "alert(2)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # the metadata table, as text
    data_text = found[0][1]
    assert "</" not in data_text and "<!--" not in data_text
    data = json.loads(data_text)
    assert HOSTILE in [row[0] for row in data["rows"]]  # the JSON keeps the name intact


def test_every_inline_script_is_admitted_by_hash_and_nothing_else(tmp_path: Path) -> None:
    page = html_report(save_layered(tmp_path))
    policy = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page)
    assert policy is not None
    directives = dict(part.strip().split(" ", 1) for part in policy.group(1).split(";"))
    assert directives["default-src"] == "'none'" and directives["connect-src"] == "'none'"
    hashes = {
        "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"
        for attrs, body in scripts(page)
        if "application/json" not in attrs
    }
    assert set(directives["script-src"].split()) == hashes and len(hashes) == 3
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # no URL to fetch


def test_page_data_carries_the_statistics_and_depth_series(tmp_path: Path) -> None:
    path = save_layered(tmp_path)
    report = statevault.stats(path, histogram_bins=8)
    data = page_data(report)
    rows = {row[0]: dict(zip(data["columns"], row, strict=True)) for row in data["rows"]}
    down = next(t for t in report.tensors if t.name == "model.blocks.3.mlp.down.weight")
    row = rows[down.name]
    assert row["norm"] == float(f"{down.norm:.6g}") and row["depth"] == 3
    assert data["types"][row["type"]] == "model.blocks.*.mlp.down.weight"
    assert [f[0] for f in rows["model.head.weight"]["flags"]] == ["nan", "inf"]
    depth = data["depth"]
    assert depth["depths"] == [0, 1, 2, 3, 4, 5]
    series = {s["type"]: s for s in depth["series"]}
    assert series["model.blocks.*.mlp.down.weight"]["norm"][3] == row["norm"]
    index = [t.name for t in report.tensors].index(down.name)
    low, high, counts = data["histograms"][str(index)]
    assert high == float(f"{down.maximum:.6g}")
    assert sum(counts) == down.numel and low == float(f"{down.minimum:.6g}")


def test_a_thousand_tensor_model_is_a_few_hundred_kilobytes(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    tensors = {
        f"model.layers.{i // 10}.{kind}.weight": torch.randn(8, 8, generator=g)
        for i, kind in enumerate(
            ["q", "k", "v", "o", "up", "down", "gate", "ln1", "ln2", "x"] * 100
        )
    }
    path = tmp_path / "big.safetensors"
    statevault.save(tensors, path)
    page = html_report(path)
    size = len(page.encode("utf-8"))
    assert len(json.loads(scripts(page)[0][1])["rows"]) == 1000
    assert size < 400_000, size


def test_the_diff_view_data(tmp_path: Path) -> None:
    a = save_layered(tmp_path, "a.safetensors")
    changes = {"blocks.2.attn.qkv.weight": torch.zeros(48, 16), "extra.bias": torch.ones(3)}
    b = save_layered(tmp_path, "b.safetensors", **changes)
    comparison = Comparison(
        other=str(b),
        changes={"model.blocks.2.attn.qkv.weight": 1.0, "model.embed.weight": 0.0},
        only_b=("model.extra.bias",),
    )
    data = page_data(statevault.stats(a), comparison)
    assert data["diff"]["changes"][0] == [
        "model.blocks.2.attn.qkv.weight",
        1.0,
        "model.blocks.*.attn.qkv.weight",
        2,
    ]
    assert data["diff"]["only_b"] == ["model.extra.bias"]
    page = render_page(statevault.stats(a), comparison)
    assert 'id="tab-diff"' in page and HOSTILE_META not in page
