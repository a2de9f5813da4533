"""bench --markdown replaces only its generated section, so the docs' tables come from a run;
the rows it renders judge each group by its own figure (median, or fastest of N, said so)."""

from __future__ import annotations

from pathlib import Path

from bench.tables import END, START, Group, headline, render, write_markdown


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


MIB = 1 << 20
PREPARED = {"k": {"bytes": 100 * MIB, "tensors": 3}}


def _row(*times: float) -> dict[str, object]:
    ordered = sorted(times)
    return {"times": list(times), "median": ordered[len(ordered) // 2], "anon": MIB, "file": 0}


def _line(text: str, case: str) -> list[str]:
    [line] = [line for line in text.splitlines() if line.startswith(f"| {case} |")]
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_saves_without_fsync_are_judged_by_their_fastest_run_and_say_so() -> None:
    group = Group(
        "Save (no fsync)",
        "k",
        ("raw os.write", "safetensors save_file", "statevault save (fsync=False)"),
        "raw os.write",
        fastest=True,
    )
    results = {
        "k:raw os.write": _row(0.5, 0.05, 0.6, 0.7, 0.8),
        "k:safetensors save_file": _row(0.4, 0.5, 0.08, 0.9, 0.9),  # median 0.5
        "k:statevault save (fsync=False)": _row(0.1, 0.2, 0.3, 0.3, 0.3),  # median 0.3
    }
    text = render([group], PREPARED, results)
    assert "| case | fastest of 5 s |" in text
    assert "Fastest of 5 runs, not the median" in text
    ours = _line(text, "statevault save (fsync=False)")
    assert ours[1] == "0.100" and ours[5] == "0.80x" and ours[6] == "0.50x"  # 0.08/0.1, 0.05/0.1
    assert "| Save (no fsync) (100 MiB) | statevault save (fsync=False) | 0.100 | safetensors " \
        "save_file | 0.080 | 0.80x |" in headline([group], PREPARED, results)  # fmt: skip


def test_fresh_process_build_rows_compare_with_the_best_peer_and_the_fill_floor() -> None:
    cases = (
        "raw allocate + fill the same bytes",
        "Model() + torch.load(mmap) + load_state_dict",
        "Model() + safetensors load_model",
        "statevault build_model",
    )
    group = Group("Build, fresh process", "k", cases, cases[0], fresh=True)
    results = {
        f"k:fresh:{cases[0]}": _row(0.2, 0.3, 0.25),
        f"k:fresh:{cases[1]}": _row(1.2, 1.0, 1.1),
        f"k:fresh:{cases[2]}": _row(0.9, 0.8, 0.7),
        f"k:fresh:{cases[3]}": _row(0.5, 0.4, 0.3),
    }
    text = render([group], PREPARED, results)
    assert "| case | median s |" in text and "A new interpreter per run" in text
    ours = _line(text, "statevault build_model")
    assert ours[1] == "0.400" and ours[5] == "2.00x" and ours[6] == "0.62x"  # 0.8/0.4, 0.25/0.4
    floor = _line(text, cases[0])
    assert floor[5] == "" and floor[6] == ""  # the floor is no peer and has no ratio itself


def test_an_in_process_and_a_fresh_process_row_of_one_case_are_kept_apart() -> None:
    # the same case name in both groups: the fresh-process row once overwrote the other
    case = "statevault build_model"
    peer = "Model() + safetensors load_model"
    in_process = Group("Build", "k", (peer, case), None)
    fresh = Group("Build, fresh process", "k", (peer, case), None, fresh=True)
    results = {
        in_process.key(peer): _row(4.0, 4.0, 4.0),
        in_process.key(case): _row(0.5, 0.5, 0.5),
        fresh.key(peer): _row(5.0, 5.0, 5.0),
        fresh.key(case): _row(1.0, 1.0, 1.0),
    }
    assert in_process.key(case) != fresh.key(case)
    lines = headline([in_process, fresh], PREPARED, results).splitlines()
    assert any("| Build (100 MiB) | statevault build_model | 0.500 |" in line for line in lines)
    assert any("| Build, fresh process (100 MiB) | statevault build_model | 1.000 |" in line
               for line in lines)  # fmt: skip


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
