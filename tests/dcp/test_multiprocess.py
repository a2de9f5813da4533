"""statevault.dcp in real processes: gloo ranks on localhost, save at 2, load at 1 and 3.

Each rank is a subprocess (``tests.helpers.dcp_ranks``) with torch's env variables and a
port chosen free by the test; every wait is bounded. What a load gathered is compared bit
for bit with a single process that trains the same model the same step.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from tests.helpers.dcp_ranks import build, extras, flat_optimizer, load, optimizer, train_step

import statevault

# DCP warns on every save/load without an initialised process group (its single-process mode)
pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 120


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _start(action: str, world: int, checkpoint: Path, out: Path) -> list[subprocess.Popen[bytes]]:
    port = _free_port()
    ranks = []
    for rank in range(world):
        env = dict(
            os.environ,
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=str(world),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            OMP_NUM_THREADS="1",
            PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
        )
        command = [
            sys.executable,
            "-m",
            "tests.helpers.dcp_ranks",
            action,
            str(checkpoint),
            str(out),
        ]
        ranks.append(subprocess.Popen(command, env=env, cwd=ROOT, stderr=subprocess.PIPE))
    return ranks


def _run(action: str, world: int, checkpoint: Path, out: Path) -> None:
    ranks = _start(action, world, checkpoint, out)
    try:
        for rank, process in enumerate(ranks):
            _, err = process.communicate(timeout=TIMEOUT)
            assert process.returncode == 0, f"rank {rank}: {err.decode()[-3000:]}"
    finally:
        _end(ranks)


def _end(ranks: list[subprocess.Popen[bytes]]) -> None:
    """Kill what still runs (only the ranks this test started) and close their pipes."""
    for process in ranks:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=TIMEOUT)


def _reference() -> dict[str, Any]:
    model = build()
    optim = optimizer(model)
    train_step(model, optim)
    return {
        "model": {k: v.detach() for k, v in model.state_dict().items()},
        "optim": flat_optimizer(model, optim),
        **extras(),
        "plain": torch.arange(5, dtype=torch.int64),
        "step": 3,
        "note": "hello",
    }


def _assert_bit_exact(found: Any, expected: Any, where: str = "") -> None:
    if isinstance(expected, dict):
        assert sorted(found) == sorted(expected), where
        for key in expected:
            _assert_bit_exact(found[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, torch.Tensor):
        assert found.dtype == expected.dtype and found.shape == expected.shape, where
        assert torch.equal(
            found.reshape(-1).view(torch.uint8), expected.reshape(-1).view(torch.uint8)
        ), where
    else:
        assert found == expected, where


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    checkpoint = tmp_path_factory.mktemp("dcp") / "ckpt"
    _run("save", 2, checkpoint, checkpoint.parent / "unused")
    return checkpoint


def test_two_ranks_write_one_file_each_and_the_index(saved: Path) -> None:
    names = sorted(os.listdir(saved))
    assert names[-1] == "statevault-dcp.json"
    assert [n[:9] for n in names[:-1]] == ["rank00000", "rank00001"]


def test_three_ranks_load_what_two_saved_bit_exact(saved: Path, tmp_path: Path) -> None:
    out = tmp_path / "gathered.safetensors"
    _run("load", 3, saved, out)
    _assert_bit_exact(statevault.load(out), _reference())


def test_a_rank_killed_during_a_save_leaves_the_previous_checkpoint(
    saved: Path, tmp_path: Path
) -> None:
    """Loaded at world size 1: this process, torch.distributed not initialised."""
    checkpoint = tmp_path / "ckpt"
    subprocess.run(["cp", "-r", str(saved), str(checkpoint)], check=True)
    before = (checkpoint / "statevault-dcp.json").read_bytes()
    old_files = set(os.listdir(checkpoint))
    ranks = _start("save-killed", 2, checkpoint, tmp_path / "unused")
    try:
        ranks[1].wait(timeout=TIMEOUT)
        assert ranks[1].returncode == -9
    finally:
        _end(ranks)  # rank 0 waits on the dead rank: end it
    assert (checkpoint / "statevault-dcp.json").read_bytes() == before
    left = set(os.listdir(checkpoint))
    assert old_files < left  # the killed save's files lie beside, named by no index
    model = build()
    _assert_bit_exact(load(model, optimizer(model), None, str(checkpoint)), _reference())


@pytest.fixture(scope="module")
def native(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What DCP's own FileSystemWriter leaves after the same 2-rank save."""
    checkpoint = tmp_path_factory.mktemp("distcp") / "ckpt"
    _run("save-native", 2, checkpoint, checkpoint.parent / "unused")
    return checkpoint


def _flat_reference() -> dict[str, Any]:
    """The reference as DCP's flat keys name it (non-tensor values are not read)."""
    reference = _reference()
    flat = {f"model.{k}": v for k, v in reference["model"].items()}
    flat.update({f"optim.state.{k}": v for k, v in reference["optim"].items()})
    flat.update({k: reference[k] for k in ("rows", "cols", "replicated", "plain")})
    return flat


def test_dcps_own_format_from_two_ranks_reads_and_converts_bit_exact(
    native: Path, tmp_path: Path
) -> None:
    assert sorted(os.listdir(native)) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    with statevault.Checkpoint(native) as opened:
        assert opened.kind == "distcp"
        _assert_bit_exact(opened.read(), _flat_reference())
        assert {"step", "note"} <= set(json.loads(opened.metadata["dcp.objects"]))
    assert statevault.verify(native).ok
    statevault.convert(native, tmp_path / "one.safetensors")
    _assert_bit_exact(statevault.load(tmp_path / "one.safetensors"), _flat_reference())
    statevault.convert(native, f"{tmp_path / 'hf'}/", max_shard_size="1KB")
    assert len(list((tmp_path / "hf").glob("model-*-of-*.safetensors"))) > 1
    _assert_bit_exact(statevault.load(tmp_path / "hf"), _flat_reference())
