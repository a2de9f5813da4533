"""save, load and load_into leave nothing for the cyclic garbage collector.

torch's own tests assert ``gc.collect() == 0`` after a load; a ctypes array type built per
call (``c_ubyte * n``) left 14 objects each time.
"""

from __future__ import annotations

import gc
from pathlib import Path

from torch import nn

import statevault


def _model() -> nn.Module:
    # sizes of every kind: small tensors (batched reads and writes) and distinct byte counts
    return nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 7), nn.BatchNorm1d(7), nn.Linear(7, 3))


def test_save_load_into_and_load_leave_no_garbage(tmp_path: Path) -> None:
    model = _model()
    path = tmp_path / "model.safetensors"
    statevault.save(model, path)  # first calls may fill caches (imports, functools.cache)
    statevault.load_into(model, path)
    statevault.load(path)
    gc.collect()
    statevault.save(model, path)
    assert gc.collect() == 0
    statevault.load_into(_model(), path)
    assert gc.collect() == 0
    statevault.load(path)
    assert gc.collect() == 0
