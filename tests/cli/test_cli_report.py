"""``statevault report``: one HTML file written in place, the diff view with OTHER."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from click.testing import CliRunner, Result

import statevault
from statevault.cli import main


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def embedded(page: str) -> dict[str, object]:
    found = re.search(
        r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S
    )
    assert found is not None
    data: dict[str, object] = json.loads(found.group(1))
    return data


def test_report_writes_one_page_and_replaces_an_old_one(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    statevault.save({"a.w": torch.ones(3), "a.b": torch.tensor([1.0, float("nan")])}, path)
    out = tmp_path / "out" / "r.html"
    out.parent.mkdir()
    out.write_text("old")
    result = run("report", path, "-o", out)
    assert result.exit_code == 0, result.output  # a damaged checkpoint still gets its page
    assert result.stdout.startswith(f"wrote {out} (")
    data = embedded(out.read_text(encoding="utf-8"))
    assert data["damaged"] is True and "diff" not in data
    assert [p.name for p in out.parent.iterdir()] == ["r.html"]  # no temporary left behind


def test_report_with_other_has_the_diff_view(tmp_path: Path) -> None:
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    statevault.save({"l.0.w": torch.ones(4), "l.1.w": torch.ones(4)}, a)
    statevault.save({"l.0.w": torch.ones(4), "l.1.w": torch.full((4,), 2.0)}, b)
    out = tmp_path / "d.html"
    assert run("report", a, b, "-o", out).exit_code == 0
    diff = embedded(out.read_text(encoding="utf-8"))["diff"]
    assert isinstance(diff, dict)
    assert diff["changes"] == [["l.0.w", 0.0, "l.*.w", 0], ["l.1.w", 0.5, "l.*.w", 1]]


def test_report_of_a_missing_path_is_exit_2_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    result = run("report", tmp_path / "nope.safetensors", "-o", out)
    assert result.exit_code == 2 and "no such checkpoint" in result.stderr
    assert not out.exists()
