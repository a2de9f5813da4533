"""The README's quickstart and docs/loading.md's build_model examples run and do what they say."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch

import statevault

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
LOADING = ROOT / "docs" / "loading.md"


def _python_blocks(document: Path, section: str) -> list[str]:
    text = document.read_text(encoding="utf-8")
    start = text.index(f"## {section}")
    end = text.find("\n## ", start + 3)
    return re.findall(r"```python\n(.*?)```", text[start:end], flags=re.S)


def test_quickstart_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    quickstart = _python_blocks(README, "Quickstart")[0]
    exec(compile(quickstart, "README quickstart", "exec"), {})  # asserts equal predictions
    assert (tmp_path / "model.safetensors").is_file()


def test_build_model_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {}
    one_step, two_steps = _python_blocks(LOADING, "Build and load in one step")
    for block in (one_step, two_steps):  # the first block saves the file both then build from
        exec(compile(block, "docs/loading.md", "exec"), namespace)
        saved = statevault.load(tmp_path / "model.safetensors")
        loaded = namespace["model"].state_dict()
        assert saved.keys() == loaded.keys()
        assert all(torch.equal(saved[k], loaded[k]) for k in saved)
        assert not any(t.is_meta for t in loaded.values())
