"""bench --markdown replaces only its generated section, so the docs' tables come from a run."""

from __future__ import annotations

from pathlib import Path

from bench.__main__ import END, START, write_markdown


def test_generated_section_is_replaced_and_the_prose_kept(tmp_path: Path) -> None:
    doc = tmp_path / "performance.md"
    doc.write_text("# Performance\n\nProse before.\n", encoding="utf-8")
    write_markdown(doc, "Run one.", "| a |\n")
    first = doc.read_text(encoding="utf-8")
    assert first.startswith("# Performance\n\nProse before.\n\n" + START)
    assert "Run one." in first and first.rstrip().endswith(END)

    doc.write_text(first + "\nProse after.\n", encoding="utf-8")
    write_markdown(doc, "Run two.", "| b |\n")
    second = doc.read_text(encoding="utf-8")
    assert "Run one." not in second and "| a |" not in second
    assert "Run two." in second and "| b |" in second
    assert second.count(START) == 1 and second.endswith("\nProse after.\n")
