"""torch pickles are read with the weights-only loader; numpy arrays are the one addition.

The allowlist is scoped to our own loads (torch's safe_globals context manager), and every
pickle that would need anything beyond tensors, containers and numpy's array
reconstruction is still refused, before any of its code can run.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import statevault
from statevault import UnsupportedObjectError
from statevault.readers.weights_only import numpy_array_globals, numpy_arrays_allowed


class RunsCode:
    """Unpickling this calls a function of the pickle's choosing."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, ...]:
        return self.func, self.args


def _write_raw_pickle(path: Path, obj: Any) -> None:
    # legacy torch.save format: magic number, protocol, sys info, then the object
    torch.save(obj, path, _use_new_zipfile_serialization=False)


EVIL: dict[str, Any] = {
    "os.system": RunsCode(os.system, "exit 3"),
    "eval": RunsCode(eval, "1 + 1"),
    "exec": RunsCode(exec, "import os"),
    "getattr": RunsCode(getattr, "text", "upper"),
    "numpy.load": RunsCode(np.load, "/nonexistent.npy", None, True),
    "numpy scalar": np.float64(1.5),
    "numpy object array": np.array([1, "x"], dtype=object),
    "numpy recarray": np.rec.array([(1, 2.0)], dtype=[("a", "i4"), ("b", "f8")]),
    "numpy frombuffer": RunsCode(np.frombuffer, b"\x00" * 8),
    "pathlib": Path("/"),
}


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("name", list(EVIL))
def test_evil_pickles_are_refused_everywhere(name: str, legacy: bool, tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    if legacy:
        _write_raw_pickle(path, {"x": EVIL[name]})
    else:
        torch.save({"x": EVIL[name]}, path)
    for attempt in (
        lambda: statevault.load(path),
        lambda: statevault.inspect(path),
        lambda: statevault.convert(path, tmp_path / "out.safetensors"),
        lambda: statevault.Checkpoint(path),
    ):
        with pytest.raises(UnsupportedObjectError, match="weights-only loader refused"):
            attempt()
    assert not (tmp_path / "out.safetensors").exists()


def test_a_raw_pickle_never_runs(tmp_path: Path) -> None:
    canary = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"x": RunsCode(os.system, f"touch {canary}")}))
    for attempt in (
        lambda: statevault.load(path),
        lambda: statevault.inspect(path),
        lambda: statevault.load_into(torch.nn.Linear(1, 1), path),
    ):
        with pytest.raises(UnsupportedObjectError, match="never unpickles"):
            attempt()
    assert not canary.exists()


def test_numpy_rng_state_loads_and_converts(tmp_path: Path) -> None:
    rng = np.random.RandomState(7)
    rng.random_sample(3)
    torch.save({"numpy": rng.get_state(), "cpu": torch.get_rng_state()}, tmp_path / "r.pth")
    loaded = statevault.load(tmp_path / "r.pth")
    assert loaded["numpy"][1].dtype == np.uint32
    statevault.convert(tmp_path / "r.pth", tmp_path / "r.safetensors")
    back = statevault.load(tmp_path / "r.safetensors")
    resumed = np.random.RandomState()
    resumed.set_state(back["numpy"])
    assert np.array_equal(resumed.random_sample(20), rng.random_sample(20))
    assert torch.equal(back["cpu"], loaded["cpu"])


def _numpy_globals_added(before: list[object]) -> list[str]:
    """numpy names now allowed process-wide that were not before. torch registers some of
    its own classes lazily (DTensor's, dynamo's) as modules import: those are not ours."""
    added = [g for g in torch.serialization.get_safe_globals() if g not in before]
    names = [
        entry[1] if isinstance(entry, tuple) else f"{entry.__module__}.{entry.__qualname__}"
        for entry in added
    ]
    return [name for name in names if name.startswith("numpy")]


def test_the_allowlist_is_scoped_not_process_wide(tmp_path: Path) -> None:
    before = list(torch.serialization.get_safe_globals())
    torch.save({"a": np.arange(3)}, tmp_path / "a.pt")
    statevault.load(tmp_path / "a.pt")
    assert _numpy_globals_added(before) == []
    with pytest.raises(pickle.UnpicklingError):  # torch alone still refuses numpy arrays
        torch.load(tmp_path / "a.pt", weights_only=True)
    with numpy_arrays_allowed():
        assert np.array_equal(torch.load(tmp_path / "a.pt", weights_only=True)["a"], np.arange(3))
    assert _numpy_globals_added(before) == []


def test_the_allowlist_is_exactly_array_reconstruction() -> None:
    names = sorted(
        entry[1] if isinstance(entry, tuple) else f"{entry.__module__}.{entry.__qualname__}"
        for entry in numpy_array_globals()
    )
    assert names[:2] == [
        "numpy._core.multiarray._reconstruct",
        "numpy.core.multiarray._reconstruct",
    ]
    rest = names[2:]
    assert "numpy.ndarray" in rest and "numpy.dtype" in rest
    dtype_classes = [n for n in rest if n not in ("numpy.ndarray", "numpy.dtype")]
    assert dtype_classes and all(n.startswith("numpy.dtypes.") for n in dtype_classes)
    assert not {"numpy.dtypes.ObjectDType", "numpy.dtypes.StrDType"} & set(dtype_classes)
