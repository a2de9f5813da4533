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


def test_an_mmap_only_run_replaces_only_its_own_section(tmp_path: Path) -> None:
    import argparse

    from bench.__main__ import MAPPED_END, MAPPED_START, _write_docs

    doc = tmp_path / "performance.md"
    write_markdown(doc, "Full run.", "| full tables |\n")
    row = {"processes": 4, "file_bytes": 1 << 30, "file_pages": 1 << 30, "anon": 0, "pss": 0}
    shared = {"mapped": {**row, "total": 1 << 30, "cached": 0}}
    shared["copied"] = {**row, "anon": 4 << 30, "total": 5 << 30, "cached": 0}
    bert = {
        "transformers from_pretrained + first forward": {"median": 2.0},
        "statevault build_model(mmap=True) + first forward": {"median": 1.0},
    }
    results = {"mapped": {"shared": shared, "bert": bert, "runs": 3}}
    args = argparse.Namespace(markdown=str(doc), headline=str(tmp_path / "README.md"))
    _write_docs(args, [], "Mapped run.", {}, results)
    text = doc.read_text(encoding="utf-8")
    assert "| full tables |" in text and "Full run." in text  # the main section is kept
    mapped = text.split(MAPPED_START, 1)[1].split(MAPPED_END, 1)[0]
    assert "| statevault load(mmap=True) | 1024 | 1.00x | 1024 | 0 | 0 | 0 |" in mapped
    assert (
        "| statevault build_model(mmap=True) + first forward | 1.000 | 0.50x its time |" in mapped
    )
    assert not (tmp_path / "README.md").exists()  # no headline from a partial run
