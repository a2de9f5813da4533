"""Hugging Face and accelerate checkpoint folders, built for real from tiny configs.

A Trainer ``checkpoint-N/`` and an accelerate ``save_state`` folder read as a whole, convert
losslessly to one statevault file (numpy RNG state included), and resume bit-exactly; a
``save_pretrained`` folder reads as its model.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.torch
import torch
from click.testing import CliRunner
from torch import nn

import statevault
from statevault.cli import main

transformers = pytest.importorskip("transformers")
accelerate = pytest.importorskip("accelerate")


def same(a: Any, b: Any, path: str = "") -> None:
    """Deep equality that checks types, dtypes and NaNs (asserts, naming the path)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype, path
        assert torch.equal(a, b), path
    elif isinstance(a, np.ndarray):
        assert type(b) is np.ndarray and a.dtype == b.dtype and np.array_equal(a, b), path
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), path
        for key in a:
            same(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            same(x, y, f"{path}.{i}")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), path
    else:
        assert type(a) is type(b) and a == b, path


def tiny_config() -> Any:
    return transformers.GPT2Config(
        n_layer=1, n_embd=8, n_head=2, vocab_size=32, n_positions=16, bos_token_id=0,
        eos_token_id=1,
    )  # fmt: skip


class Tokens(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = (torch.arange(8) + i) % 32
        return {"input_ids": ids, "labels": ids}


def training_args(out: Path) -> Any:
    return transformers.TrainingArguments(
        output_dir=str(out), max_steps=2, save_steps=1, per_device_train_batch_size=2,
        use_cpu=True, report_to=[], disable_tqdm=True, logging_strategy="no",
    )  # fmt: skip


@pytest.fixture(scope="module")
def trainer_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("trainer")
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(tiny_config())
    transformers.Trainer(model=model, args=training_args(out), train_dataset=Tokens()).train()
    return out / "checkpoint-2"


def reference(path: Path) -> Any:
    """What the file holds, by its writer's own loader (our own test file, so trusted)."""
    if path.suffix == ".safetensors":
        return safetensors.torch.load_file(path)
    return torch.load(path, weights_only=False)


def test_trainer_folder_is_read_as_a_whole(trainer_checkpoint: Path) -> None:
    with statevault.Checkpoint(trainer_checkpoint) as reader:
        contents = {entry.file: entry for entry in reader.contents}
        assert reader.kind == "folder"
    assert contents["training_args.bin"].status == "not loadable without pickle"
    assert contents["training_args.bin"].key is None
    assert contents["training_args.bin"].note == (
        "torch's weights-only loader refused it "
        "(Unsupported global: GLOBAL transformers.training_args.TrainingArguments)"
    )
    keys = {e.file: e.key for e in contents.values() if e.status == "loaded"}
    assert keys == {
        "config.json": "config",
        "generation_config.json": "generation_config",
        "model.safetensors": "model",
        "optimizer.pt": "optimizer",
        "rng_state.pth": "rng_state",
        "scheduler.pt": "scheduler",
        "trainer_state.json": "trainer_state",
    }
    state = statevault.load(trainer_checkpoint)
    assert list(state) == sorted(keys.values())
    for file, key in keys.items():
        if not file.endswith(".json"):
            same(reference(trainer_checkpoint / file), state[key], key)
    assert state["trainer_state"]["global_step"] == 2
    assert state["rng_state"]["numpy"][1].dtype == np.uint32


def test_trainer_folder_converts_losslessly_and_resumes_bit_exact(
    trainer_checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run.safetensors"
    report = statevault.convert(trainer_checkpoint, out)
    assert report.source_kind == "folder"
    assert statevault.verify(out).ok
    converted = statevault.load(out)
    same(statevault.load(trainer_checkpoint), converted)

    original = reference(trainer_checkpoint / "rng_state.pth")

    def draws(rng: dict[str, Any]) -> tuple[Any, ...]:
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.random.set_rng_state(rng["cpu"])
        return random.random(), np.random.random_sample(5).tolist(), torch.rand(5).tolist()

    assert draws(converted["rng_state"]) == draws(original)

    # the optimizer resumes where it stopped: one more step gives identical weights
    def step(optimizer_state: dict[str, Any]) -> dict[str, torch.Tensor]:
        model = transformers.GPT2LMHeadModel(tiny_config())
        statevault.load_into(model, trainer_checkpoint)
        # the Trainer's own optimizer (its parameter groups), restored from the state
        trainer = transformers.Trainer(model=model, args=training_args(tmp_path / "again"))
        optimizer = trainer.create_optimizer()
        optimizer.load_state_dict(optimizer_state)
        torch.manual_seed(1)
        batch = Tokens()[0]
        loss = model(input_ids=batch["input_ids"][None], labels=batch["labels"][None]).loss
        loss.backward()
        optimizer.step()
        return {k: v.clone() for k, v in model.state_dict().items()}

    same(step(reference(trainer_checkpoint / "optimizer.pt")), step(converted["optimizer"]))


def test_load_into_takes_the_model_weights_of_a_trainer_folder(trainer_checkpoint: Path) -> None:
    model = transformers.GPT2LMHeadModel(tiny_config())
    report = statevault.load_into(model, trainer_checkpoint)
    assert report.ok
    weights = reference(trainer_checkpoint / "model.safetensors")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())
    assert statevault.check(transformers.GPT2LMHeadModel(tiny_config()), trainer_checkpoint).ok


def test_cli_reads_a_trainer_folder(trainer_checkpoint: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    inspected = runner.invoke(main, ["inspect", str(trainer_checkpoint), "--depth", "1"])
    assert inspected.exit_code == 0, inspected.output
    assert "optimizer.pt -> optimizer: loaded" in inspected.output
    assert "training_args.bin: not loadable without pickle (torch's weights-only" in (
        inspected.output
    )
    as_json = runner.invoke(main, ["inspect", str(trainer_checkpoint), "--json"])
    files = {f["file"]: f["status"] for f in json.loads(as_json.output)["files"]}
    assert files["training_args.bin"] == "not loadable without pickle"
    out = tmp_path / "run.safetensors"
    converted = runner.invoke(main, ["convert", str(trainer_checkpoint), str(out)])
    assert converted.exit_code == 0, converted.output
    compared = runner.invoke(main, ["diff", str(trainer_checkpoint), str(out)])
    assert compared.exit_code == 0, compared.output


def test_save_pretrained_folder_is_its_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(tiny_config())
    model.save_pretrained(tmp_path / "pretrained")
    folder = tmp_path / "pretrained"
    loaded = statevault.load(folder)
    same(reference(folder / "model.safetensors"), loaded)
    with statevault.Checkpoint(folder) as reader:
        statuses = {e.file: e.status for e in reader.contents}
    assert statuses["model.safetensors"] == "loaded" and statuses["config.json"] == "ignored"
    fresh = transformers.GPT2LMHeadModel(tiny_config())
    assert statevault.load_into(fresh, folder).ok
    assert torch.equal(fresh.lm_head.weight, model.lm_head.weight)
    built = statevault.build_model(transformers.GPT2LMHeadModel, folder, args=(tiny_config(),))
    assert torch.equal(built.transformer.wte.weight, model.transformer.wte.weight)


def test_safetensors_is_preferred_over_the_same_weights_as_bin(tmp_path: Path) -> None:
    statevault.save({"w": torch.ones(2)}, tmp_path / "model.safetensors")
    torch.save({"w": torch.zeros(2)}, tmp_path / "pytorch_model.bin")
    assert torch.equal(statevault.load(tmp_path)["w"], torch.ones(2))
    with statevault.Checkpoint(tmp_path) as reader:
        entry = next(e for e in reader.contents if e.file == "pytorch_model.bin")
    assert entry.status == "superseded" and "model.safetensors" in entry.note


def test_accelerate_save_state_folder(tmp_path: Path) -> None:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    torch.manual_seed(0)
    accelerator = Accelerator(cpu=True)
    try:
        model = nn.Linear(4, 2)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
        model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
        model(torch.ones(3, 4)).sum().backward()
        optimizer.step()
        scheduler.step()
        np.random.seed(3)
        np.random.random_sample(2)
        accelerator.save_state(str(tmp_path / "state"))
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    folder = tmp_path / "state"
    with statevault.Checkpoint(folder) as reader:
        keys = {e.file: e.key for e in reader.contents if e.status == "loaded"}
    assert keys["model.safetensors"] == "model"
    assert keys["optimizer.bin"] == "optimizer"
    assert keys["random_states_0.pkl"] == "random_states_0"
    state = statevault.load(folder)
    for file, key in keys.items():
        same(reference(folder / file), state[key], key)

    out = tmp_path / "state.safetensors"
    statevault.convert(folder, out)
    converted = statevault.load(out)
    same(state, converted)
    original = reference(folder / "random_states_0.pkl")

    def draws(rng: dict[str, Any]) -> tuple[Any, ...]:
        random.setstate(rng["random_state"])
        np.random.set_state(rng["numpy_random_seed"])
        torch.set_rng_state(rng["torch_manual_seed"])
        return random.random(), np.random.random_sample(5).tolist(), torch.rand(5).tolist()

    assert draws(converted["random_states_0"]) == draws(original)
    fresh = nn.Linear(4, 2)
    statevault.load_into(fresh, folder)
    assert torch.equal(fresh.weight, accelerator.unwrap_model(model).weight)


def test_verify_hashes_the_safetensors_files_and_names_the_pickles(
    trainer_checkpoint: Path,
) -> None:
    report = statevault.verify(trainer_checkpoint)
    assert report.ok and report.kind == "folder"
    unverified = [n for n in report.notes if "torch pickle" in n]
    assert sorted(Path(n.split(":")[0]).name for n in unverified) == [
        "optimizer.pt",
        "rng_state.pth",
        "scheduler.pt",
    ]


def test_a_folder_without_model_weights_names_what_it_holds(tmp_path: Path) -> None:
    torch.save({"state": {}, "param_groups": []}, tmp_path / "optimizer.pt")
    (tmp_path / "trainer_state.json").write_text('{"global_step": 3}')
    assert statevault.load(tmp_path) == {
        "optimizer": {"state": {}, "param_groups": []},
        "trainer_state": {"global_step": 3},
    }
    with pytest.raises(
        statevault.CheckpointNotFoundError, match=r"no model weights.*optimizer\.pt"
    ):
        statevault.load_into(nn.Linear(1, 1), tmp_path)


def test_a_save_model_folder_with_refused_training_args_is_its_model(
    trainer_checkpoint: Path, tmp_path: Path
) -> None:
    # what trainer.save_model() leaves: weights, config.json and the pickled training_args.bin
    folder = tmp_path / "final"
    folder.mkdir()
    for name in ("model.safetensors", "config.json", "training_args.bin"):
        (folder / name).write_bytes((trainer_checkpoint / name).read_bytes())
    same(reference(folder / "model.safetensors"), statevault.load(folder))
    with statevault.Checkpoint(folder) as reader:
        statuses = {e.file: e.status for e in reader.contents}
    assert statuses == {
        "model.safetensors": "loaded",
        "config.json": "ignored",
        "training_args.bin": "not loadable without pickle",
    }


def test_load_into_opens_only_the_weights_of_a_folder(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    statevault.save(model, tmp_path / "model.safetensors")
    (tmp_path / "optimizer.pt").write_bytes(b"PK\x03\x04 not really a zip")  # damaged
    fresh = nn.Linear(3, 2)
    assert statevault.load_into(fresh, tmp_path).ok  # the optimizer is never opened
    assert torch.equal(fresh.weight, model.weight)
    with statevault.Checkpoint(tmp_path, weights=True) as reader:
        assert reader.kind == "statevault"
        assert {e.file: e.status for e in reader.contents} == {
            "model.safetensors": "loaded",
            "optimizer.pt": "ignored",
        }
    with pytest.raises(statevault.CorruptFileError, match=r"optimizer\.pt"):
        statevault.load(tmp_path)  # reading all of it meets the damage, and says where
