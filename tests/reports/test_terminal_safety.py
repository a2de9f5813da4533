"""Names and metadata from a file never reach the terminal raw; long ones are shortened."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from click.testing import CliRunner, Result

import statevault
from statevault.cli import main
from statevault.reports.display import NAME_CHARS, VALUE_CHARS, shown

EVIL = "evil\x1b]0;pwned\x07\x1b[2J\x9b31m\x7f\u202e\nline"
RAW = ("\x1b", "\x07", "\x9b", "\x7f", "\u202e")


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def test_shown_escapes_every_control_character_and_shortens_with_the_length() -> None:
    assert shown("a\x1bb") == "a\\x1bb"
    assert shown("\x00\x1f\x7f\x80\x9f\n\t") == "\\x00\\x1f\\x7f\\x80\\x9f\\x0a\\x09"
    assert shown("\u202eabc\u2028") == "\\u202eabc\\u2028"
    assert shown("plain é ü 中") == "plain é ü 中"  # printable text is left alone
    long = "\x1b" + "x" * 10_000_000
    text = shown(long, limit=50)
    assert text == "\\x1b" + "x" * 49 + "…(10000001 chars)"


def _evil_file(tmp_path: Path, name: str, epoch: str) -> Path:
    path = tmp_path / name
    statevault.save(
        {EVIL: torch.ones(2), "epoch": epoch, "x" * 5000: torch.zeros(1)},
        path,
        metadata={EVIL: EVIL, "big": "y" * 5_000_000},
    )
    return path


def test_inspect_verify_diff_escape_what_the_file_says(tmp_path: Path) -> None:
    a = _evil_file(tmp_path, "a.safetensors", "one" + EVIL)
    b = _evil_file(tmp_path, "b.safetensors", "two" + EVIL)
    with statevault.Checkpoint(a) as opened:
        info = opened.tensors[EVIL]
    raw = bytearray(a.read_bytes())
    raw[info.offset] ^= 0xFF
    a.write_bytes(raw)
    results = {
        "inspect": run("inspect", a),
        "verify": run("verify", a),
        "diff": run("diff", b, _evil_file(tmp_path, "c.safetensors", "three" + EVIL)),
    }
    assert [r.exit_code for r in results.values()] == [0, 1, 1]
    for command, result in results.items():
        for code in RAW:
            assert code not in result.output, (command, code)
        assert "evil\\x1b]0;pwned\\x07\\x1b[2J" in result.output, command
    inspected = results["inspect"].stdout
    assert "…(5000000 chars)" in inspected and "…(5000 chars)" in inspected
    assert len(inspected) < 20 * (NAME_CHARS + VALUE_CHARS)  # 5 MB of metadata, a few KB shown


def test_json_output_keeps_full_values(tmp_path: Path) -> None:
    path = _evil_file(tmp_path, "a.safetensors", EVIL)
    result = run("inspect", path, "--json")
    assert result.exit_code == 0
    assert "\x1b" not in result.stdout  # JSON escapes it as \u001b
    data = json.loads(result.stdout)
    assert data["metadata"][EVIL] == EVIL and len(data["metadata"]["big"]) == 5_000_000
    assert data["state"]["epoch"] == EVIL
    assert EVIL in {t["name"] for t in data["tensors"]}


def test_error_lines_are_escaped(tmp_path: Path) -> None:
    missing = tmp_path / "no\x1b[2Jsuch.safetensors"
    result = run("verify", missing)
    assert result.exit_code == 2
    assert "\x1b" not in result.stderr and "no\\x1b[2Jsuch" in result.stderr
    assert result.stderr.count("\n") == 1
