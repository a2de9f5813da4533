"""statevault.Checkpoint(source): one way of opening every checkpoint, for the Python API and the CLI alike."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
from click.testing import CliRunner
from torch import nn

import statevault
from statevault import CheckpointKindError, CheckpointNotFoundError
from statevault.cli import main
from statevault.readers.safetensors_file import SafetensorsCheckpoint


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


@pytest.fixture
def model() -> nn.Module:
    torch.manual_seed(0)
    return make_model()


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def write_zip(model: nn.Module, directory: Path) -> Path:
    torch.save(model.state_dict(), directory / "pytorch_model.bin")
    return directory / "pytorch_model.bin"


def write_legacy(model: nn.Module, directory: Path) -> Path:
    torch.save(model.state_dict(), directory / "old.pt", _use_new_zipfile_serialization=False)
    return directory / "old.pt"


def _sharded(model: nn.Module, directory: Path, suffix: str) -> Path:
    directory.mkdir()
    state = model.state_dict()
    stem = "model" if suffix == "safetensors" else "pytorch_model"
    weight_map = {}
    for i, prefix in enumerate(("0.", "2."), start=1):
        shard = f"{stem}-0000{i}-of-00002.{suffix}"
        part = {k: v.contiguous() for k, v in state.items() if k.startswith(prefix)}
        if suffix == "safetensors":
            safetensors.torch.save_file(part, directory / shard)
        else:
            torch.save(part, directory / shard)
        weight_map.update(dict.fromkeys(part, shard))
    index = directory / f"{stem}.{suffix}.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 1}, "weight_map": weight_map}))
    return index


def write_st_shards(model: nn.Module, directory: Path) -> Path:
    return _sharded(model, directory / "st", "safetensors").parent


def write_bin_shards(model: nn.Module, directory: Path) -> Path:
    return _sharded(model, directory / "bin", "bin").parent


def write_st_index(model: nn.Module, directory: Path) -> Path:
    return _sharded(model, directory / "sti", "safetensors")


def write_bin_index(model: nn.Module, directory: Path) -> Path:
    return _sharded(model, directory / "bini", "bin")


def write_statevault(model: nn.Module, directory: Path) -> Path:
    statevault.save(model, directory / "m.safetensors")
    return directory / "m.safetensors"


WRITERS: list[Callable[[nn.Module, Path], Path]] = [
    write_statevault,
    write_zip,
    write_legacy,
    write_st_shards,
    write_bin_shards,
    write_st_index,
    write_bin_index,
]
IDS = ["statevault", "torch-zip", "torch-legacy", "st-dir", "bin-dir", "st-index", "bin-index"]


@pytest.mark.parametrize("write", WRITERS, ids=IDS)
def test_every_entry_point_opens_every_kind(
    write: Callable[[nn.Module, Path], Path], model: nn.Module, tmp_path: Path
) -> None:
    path = write(model, tmp_path)
    expected = _state(model)

    loaded = statevault.load(path)
    assert set(loaded) == set(expected)
    assert all(torch.equal(loaded[k], v) for k, v in expected.items())

    fresh = make_model()
    assert statevault.check(fresh, path).ok
    report = statevault.load_into(fresh, path)
    assert report.ok and len(report.matched) == 4
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in expected.items())

    built = statevault.build_model(make_model, path)
    assert statevault.load_model(make_model(), path).ok
    assert all(torch.equal(built.state_dict()[k], v) for k, v in expected.items())

    with statevault.Checkpoint(path) as reader:
        assert sorted(reader.keys()) == sorted(expected)
        assert reader.signature("0.weight") == ((3, 4), torch.float32)
        assert torch.equal(reader.read(["2.bias"])["2.bias"], expected["2.bias"])

    assert statevault.inspect(path).numel == sum(v.numel() for v in expected.values())
    report = statevault.verify(path)
    assert report.ok
    if write not in (write_statevault, write_st_shards, write_st_index):
        # torch files: a zip's CRC-32s are checked, a legacy file has nothing to check
        assert report.method in ("zip CRC-32 of every entry", "nothing to check")
        assert not report.checksummed or report.method == "zip CRC-32 of every entry"
    assert statevault.diff(path, write_statevault(model, tmp_path)).ok
    result = CliRunner().invoke(main, ["inspect", str(path)])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("write", "what"),
    [
        (write_zip, "is a torch pickle \\(zip format\\), read with the weights-only loader"),
        (write_legacy, "is a torch pickle \\(legacy pre-1.6 format\\)"),
        (write_st_index, "is an index file of a sharded checkpoint"),
        (write_st_shards, "is a directory"),
    ],
    ids=["zip", "legacy", "index", "directory"],
)
def test_a_single_file_reader_says_what_a_healthy_file_is(
    write: Callable[[nn.Module, Path], Path], what: str, model: nn.Module, tmp_path: Path
) -> None:
    path = write(model, tmp_path)
    with pytest.raises(CheckpointKindError, match=what) as info:
        SafetensorsCheckpoint(path)
    assert "damaged" not in str(info.value)
    assert "statevault.Checkpoint(source)" in str(info.value)
    with statevault.Checkpoint(path) as opened:  # the one way to open returns its reader
        assert not isinstance(opened, SafetensorsCheckpoint)
        assert opened.signature("0.bias") == ((3,), torch.float32)


def test_a_damaged_safetensors_file_is_still_called_damaged(tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\xff" * 64)
    with pytest.raises(statevault.CorruptFileError) as info:
        statevault.Checkpoint(path)
    assert not isinstance(info.value, CheckpointKindError)


def test_a_plain_json_file_is_named_as_such(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointKindError, match="is a JSON file, not a checkpoint"):
        statevault.load(tmp_path / "config.json")


def test_a_directory_with_no_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(
        CheckpointNotFoundError, match=r"a directory with no checkpoint.*notes\.txt"
    ):
        statevault.load(tmp_path)
    with pytest.raises(CheckpointNotFoundError, match="no such checkpoint"):
        statevault.Checkpoint(tmp_path / "absent")


def test_a_checkpoint_the_caller_opened_stays_open(model: nn.Module, tmp_path: Path) -> None:
    path = write_statevault(model, tmp_path)
    with statevault.Checkpoint(path) as ckpt:
        assert isinstance(ckpt, SafetensorsCheckpoint) and ckpt.kind == "statevault"
        with pytest.raises(statevault.UnsupportedObjectError, match="already an open Checkpoint"):
            statevault.Checkpoint(ckpt)  # type: ignore[arg-type]
        statevault.load_into(make_model(), ckpt)
        assert torch.equal(ckpt.read(["0.bias"])["0.bias"], model.state_dict()["0.bias"])


def test_an_opened_reader_is_a_load_into_source(model: nn.Module, tmp_path: Path) -> None:
    path = write_zip(model, tmp_path)
    with statevault.Checkpoint(path) as reader:
        fresh = make_model()
        statevault.load_into(fresh, reader)
        statevault.load_into(fresh, reader)  # not closed by the first call
    assert torch.equal(fresh.state_dict()["2.weight"], model.state_dict()["2.weight"])


def test_state_dict_in_memory_is_a_reader(model: nn.Module) -> None:
    state = model.state_dict()
    with statevault.Checkpoint(state) as reader:
        assert reader.kind == "memory" and reader.signature("0.bias") == ((3,), torch.float32)
        assert reader.load() == {k: reader.read([k])[k] for k in state}
        assert reader.tensors["0.weight"].nbytes == 48


def test_torch_checkpoint_loads_on_another_device_kind(model: nn.Module, tmp_path: Path) -> None:
    path = write_zip(model, tmp_path)
    loaded = statevault.load(path, device="meta")
    assert all(t.device.type == "meta" for t in loaded.values())


def test_nested_torch_checkpoint_loads_as_saved(tmp_path: Path) -> None:
    weight = torch.ones(2, 2)
    state: dict[str, Any] = {
        "model": {"w": weight, "tied": weight},
        "epoch": 3,
        "betas": (0.9, 0.99),
    }
    torch.save(state, tmp_path / "train.pt")
    loaded = statevault.load(tmp_path / "train.pt")
    assert loaded["epoch"] == 3 and loaded["betas"] == (0.9, 0.99)
    assert loaded["model"]["w"] is loaded["model"]["tied"]
    with statevault.Checkpoint(tmp_path / "train.pt") as reader:
        assert reader.aliases == {"model.tied": "model.w"}


def test_a_torch_file_holding_what_statevault_cannot_hold_names_the_file_and_path(
    tmp_path: Path,
) -> None:
    torch.save({"opt": {"ids": {1, 2}}}, tmp_path / "x.pt")
    with pytest.raises(statevault.UnsupportedObjectError) as info:
        statevault.load(tmp_path / "x.pt")
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'x.pt'}: the weights-only loader read it")
    assert "opt.ids: cannot store <class 'set'>" in message


def test_bin_shards_may_hold_tied_weights(tmp_path: Path) -> None:
    weight = torch.arange(6.0).reshape(2, 3)
    torch.save({"emb": weight, "head": weight}, tmp_path / "pytorch_model-00001-of-00002.bin")
    torch.save({"bias": torch.ones(2)}, tmp_path / "pytorch_model-00002-of-00002.bin")
    weight_map = {"emb": "pytorch_model-00001-of-00002.bin", "head": "pytorch_model-00001-of-00002.bin",
                  "bias": "pytorch_model-00002-of-00002.bin"}  # fmt: skip
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with statevault.Checkpoint(tmp_path) as reader:
        assert reader.aliases == {"head": "emb"}
        assert sorted(reader.keys()) == ["bias", "emb", "head"]
    loaded = statevault.load(tmp_path)
    assert loaded["head"] is loaded["emb"] and torch.equal(loaded["emb"], weight)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_legacy_torch_files_of_every_pickle_protocol(protocol: int, tmp_path: Path) -> None:
    path = tmp_path / "old.pt"
    torch.save({"w": torch.ones(2)}, path, _use_new_zipfile_serialization=False,
               pickle_protocol=protocol)  # fmt: skip
    with contextlib.ExitStack() as stack:
        if protocol > 2:  # torch's own notice that its weights-only loader expects 2
            stack.enter_context(pytest.warns(UserWarning, match="pickle protocol"))
        if protocol >= 4:
            # recognised as a torch file (not a plain pickle), but torch's weights-only
            # unpickler has no FRAME opcode (149): its refusal is what the user sees
            with pytest.raises(statevault.UnsupportedObjectError, match="operand 149"):
                statevault.load(path)
            return
        assert torch.equal(statevault.load(path)["w"], torch.ones(2))
        with statevault.Checkpoint(path) as reader:
            assert reader.kind == "torch-legacy"


def test_a_plain_pickle_is_named_and_never_unpickled(tmp_path: Path) -> None:
    import pickle

    (tmp_path / "state.pkl").write_bytes(pickle.dumps({"w": [1.0]}))
    with pytest.raises(statevault.UnsupportedObjectError, match="is a plain Python pickle"):
        statevault.load(tmp_path / "state.pkl")
    with pytest.raises(statevault.UnsupportedObjectError, match="is a plain Python pickle"):
        statevault.Checkpoint(tmp_path / "state.pkl")
    # in a folder it is listed, and the rest still loads
    statevault.save({"w": torch.ones(1)}, tmp_path / "model.safetensors")
    torch.save({"step": 3}, tmp_path / "scheduler.pt")
    state = statevault.load(tmp_path)
    assert set(state) == {"model", "scheduler"}
    with statevault.Checkpoint(tmp_path) as reader:
        entry = next(e for e in reader.contents if e.file == "state.pkl")
    assert entry.status == "not loadable without pickle"


def test_a_folder_with_one_weights_file_of_any_name_is_its_model(
    model: nn.Module, tmp_path: Path
) -> None:
    statevault.save(model, tmp_path / "diffusion_pytorch_model.safetensors")
    (tmp_path / "config.json").write_text("{}")
    assert set(statevault.load(tmp_path)) == set(model.state_dict())
    fresh = make_model()
    assert statevault.load_into(fresh, tmp_path).ok
    assert torch.equal(fresh.state_dict()["0.weight"], model.state_dict()["0.weight"])


def test_a_damaged_pt_file_is_not_called_a_torch_pickle(tmp_path: Path) -> None:
    path = tmp_path / "broken.pt"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(statevault.CorruptFileError) as info:
        statevault.Checkpoint(path)
    assert not isinstance(info.value, CheckpointKindError)
    with pytest.raises(statevault.CorruptFileError, match="named like a torch file but is neither"):
        statevault.load(path)
