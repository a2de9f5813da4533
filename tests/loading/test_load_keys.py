"""``keys=``: load a subset, chosen by the model's names (a regex or a callable).

Model keys outside the selection are *not requested*: left as they were, not missing, so
``strict=True`` does not refuse them; checkpoint keys outside it are ignored, as with
``prefix=``. The same option, with the same meaning, on every loading entry point.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import statevault
from helpers.samples import poison_freed_memory
from statevault import InvalidArgumentError, StateDictMismatchError


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(6, 6)
        self.decoder = nn.Linear(6, 3)


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Net, Path]:
    torch.manual_seed(0)
    source = Net()
    path = tmp_path / "net.safetensors"
    statevault.save(source, path)
    return source, path


@pytest.mark.parametrize(
    "keys", [r"^encoder\.", lambda name: name.startswith("encoder.")], ids=["regex", "callable"]
)
def test_only_the_selected_keys_are_loaded_and_the_rest_are_not_requested(
    saved: tuple[Net, Path], keys: object
) -> None:
    source, path = saved
    torch.manual_seed(1)
    model = Net()
    before = model.decoder.weight.detach().clone()
    report = statevault.load_into(model, path, keys=keys)  # strict: not refused
    assert report.ok
    assert sorted(report.matched) == ["encoder.bias", "encoder.weight"]
    assert report.missing_keys == [] and report.unexpected_keys == []
    assert sorted(report.not_requested) == ["decoder.bias", "decoder.weight"]
    assert sorted(report.ignored) == ["decoder.bias", "decoder.weight"]  # checkpoint side
    assert torch.equal(model.encoder.weight, source.encoder.weight)
    assert torch.equal(model.decoder.weight, before)
    assert "Not requested by keys=, left as they were (2):" in str(report)
    assert report.to_dict()["counts"]["not_requested"] == 2


def test_a_selected_key_the_checkpoint_lacks_is_still_missing(tmp_path: Path) -> None:
    path = tmp_path / "enc.safetensors"
    statevault.save({"encoder.weight": torch.zeros(6, 6)}, path)
    with pytest.raises(StateDictMismatchError, match=r"encoder: 1 missing \(bias\)"):
        statevault.load_into(Net(), path, keys="^encoder")
    report = statevault.load_into(Net(), path, keys="^encoder", strict=False)
    assert report.missing_keys == ["encoder.bias"]
    assert sorted(report.not_requested) == ["decoder.bias", "decoder.weight"]


def test_keys_select_by_the_models_names_after_mapping(
    saved: tuple[Net, Path], tmp_path: Path
) -> None:
    source, _ = saved
    path = tmp_path / "wrapped.safetensors"
    statevault.save({f"model.{k}": v for k, v in source.state_dict().items()}, path)
    model = Net()
    report = statevault.load_into(model, path, strip_prefix="model.", keys=r"^decoder\.")
    assert sorted(report.matched) == ["decoder.bias", "decoder.weight"]
    assert sorted(report.ignored) == ["model.encoder.bias", "model.encoder.weight"]
    assert torch.equal(model.decoder.bias, source.decoder.bias)


def test_every_loading_entry_point_takes_keys(saved: tuple[Net, Path]) -> None:
    _, path = saved
    checked = statevault.check(Net(), path, keys="^encoder")
    assert checked.ok and sorted(checked.not_requested) == ["decoder.bias", "decoder.weight"]
    loaded = statevault.load_model(Net(), path, keys="^encoder")
    assert loaded.ok and sorted(loaded.matched) == ["encoder.bias", "encoder.weight"]
    assigned = statevault.load_into(Net(), path, keys="^encoder", assign=True)  # through torch
    assert assigned.ok and assigned.missing_keys == []


@pytest.mark.parametrize("strict", [True, False])
def test_build_model_initialises_what_keys_leaves_out(
    saved: tuple[Net, Path], strict: bool
) -> None:
    source, path = saved
    poison_freed_memory([36, 18, 6, 3])
    model = statevault.build_model(Net, path, keys="^encoder", strict=strict)
    assert torch.equal(model.encoder.weight, source.encoder.weight)
    assert torch.isfinite(model.decoder.weight).all() and torch.isfinite(model.decoder.bias).all()
    assert not torch.equal(model.decoder.weight, source.decoder.weight)
    bound = 1 / 6**0.5  # nn.Linear's own initialisation
    assert float(model.decoder.weight.detach().abs().max()) <= bound

    with statevault.skip_init():
        empty = Net()
    report = statevault.materialize(empty, path, keys="^decoder")
    assert sorted(report.initialised) == ["encoder.bias", "encoder.weight"]
    assert torch.equal(empty.decoder.weight, source.decoder.weight)
    assert torch.isfinite(empty.encoder.weight).all()


def test_convert_takes_a_callable_too(saved: tuple[Net, Path], tmp_path: Path) -> None:
    _, path = saved
    report = statevault.convert(
        path, tmp_path / "enc.safetensors", keys=lambda name: name.endswith("bias")
    )
    assert sorted(report.dropped) == ["decoder.weight", "encoder.weight"]
    assert sorted(statevault.load(tmp_path / "enc.safetensors")) == ["decoder.bias", "encoder.bias"]


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ("([", "not a valid regular expression"),
        (3, "selects nothing"),
        (lambda name: "yes", "must return"),
    ],
    ids=["bad-regex", "not-a-selection", "not-a-bool"],
)
def test_a_bad_keys_value_is_refused_naming_it(
    saved: tuple[Net, Path], keys: object, message: str
) -> None:
    _, path = saved
    with pytest.raises(InvalidArgumentError, match=message):
        statevault.load_into(Net(), path, keys=keys)  # type: ignore[arg-type]
