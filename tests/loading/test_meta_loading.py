"""load_into on meta tensors never reports a success that loaded nothing; its fix works."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import statevault
from helpers.fixes import printed_fix, run_fix
from statevault import MetaDeviceError


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


@pytest.mark.parametrize("how", ["skip_init", "to_meta"])
def test_meta_model_is_refused_and_the_printed_materialize_loads_it(
    how: str, tmp_path: Path
) -> None:
    source = _net()
    path = tmp_path / "net.safetensors"
    statevault.save(source, path)
    if how == "skip_init":
        with statevault.skip_init():
            model = _net()
    else:
        model = _net().to("meta")  # buffers on meta too: persistent ones are in the file
    with pytest.raises(MetaDeviceError, match=r"on the meta device.*nothing would be loaded") as e:
        statevault.load_into(model, path, verify=False)
    assert model[0].weight.is_meta  # untouched
    fix = printed_fix(str(e.value))
    assert fix.startswith("statevault.materialize(model, ") and "verify=False" in fix
    report = run_fix(fix, {"statevault": statevault, "model": model})
    assert report.ok
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_check_and_dry_run_work_on_meta_models(tmp_path: Path) -> None:
    path = tmp_path / "net.safetensors"
    statevault.save(_net(), path)
    with statevault.skip_init():
        model = _net()
    assert statevault.check(model, path).ok
    assert statevault.load_into(model, path, dry_run=True).ok
