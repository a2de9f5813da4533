"""The README's quickstart and load_model examples run as written and do what they say."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch

README = Path(__file__).resolve().parent.parent / "README.md"


def _python_blocks(section: str) -> list[str]:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"## {section}")
    end = text.find("\n## ", start + 3)
    return re.findall(r"```python\n(.*?)```", text[start:end], flags=re.S)


def test_quickstart_and_load_model_examples_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {}
    quickstart = _python_blocks("Quickstart")[0]
    exec(compile(quickstart, "README quickstart", "exec"), namespace)  # asserts equal predictions
    assert (tmp_path / "model.safetensors").is_file()
    saved = namespace["model"].state_dict()

    one_step, two_steps = _python_blocks("Build and load in one step")
    for block in (one_step, two_steps):
        exec(compile(block, "README load_model", "exec"), namespace)
        loaded = namespace["model"].state_dict()
        assert saved.keys() == loaded.keys()
        assert all(torch.equal(saved[k], loaded[k]) for k in saved)
