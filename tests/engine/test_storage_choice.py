"""A URL picks the object-storage backend; a local path with storage_options is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import statevault
from statevault import InvalidArgumentError


def test_storage_options_on_a_local_path_are_refused_and_the_fix_works(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    state = {"w": torch.arange(4.0)}
    with pytest.raises(InvalidArgumentError) as caught:
        statevault.save(state, path, storage_options={"anon": True})
    message = str(caught.value)
    assert message.startswith(f"{path}: storage_options apply to URLs (s3://...), not local paths")
    assert "leave it out for a local file" in message
    assert not path.exists()  # refused before anything was written
    statevault.save(state, path)  # the fix: the same call without storage_options
    assert torch.equal(statevault.load(path)["w"], state["w"])
