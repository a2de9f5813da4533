"""One rank of a distributed save or load through statevault.dcp (gloo, CPU, localhost).

Run as ``python -m tests.helpers.dcp_ranks ACTION CKPT OUT`` with torch's usual env
(RANK, WORLD_SIZE, MASTER_ADDR=127.0.0.1, MASTER_PORT); tests/dcp/test_multiprocess.py
starts the ranks. ``save`` trains the reference model one step under FSDP2 on the world's
mesh and saves model + optimizer + extra DTensor/plain/non-tensor state with
``statevault.dcp.Writer``; ``load`` builds a fresh one, loads the checkpoint with
``Reader`` at this world size (DCP reshards) and rank 0 writes the full state it gathered
to OUT with ``statevault.save``; ``save-killed`` is ``save`` where rank 1 dies by SIGKILL
after writing its file, before the index is committed; ``save-native`` is ``save`` with
DCP's own ``FileSystemWriter`` (``.metadata`` + ``.distcp`` files), for statevault to read.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemWriter, StorageWriter
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import Replicate, Shard, distribute_tensor

import statevault
from statevault.dcp import Reader, Writer

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def build() -> torch.nn.Module:
    """The reference model, the same in every process."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(12, 10), torch.nn.ReLU(), torch.nn.Linear(10, 6))


def optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    """Made after ``fully_shard``, which replaces the parameters by DTensors."""
    return torch.optim.Adam(model.parameters(), lr=0.01)


def train_step(model: torch.nn.Module, optim: torch.optim.Optimizer) -> None:
    torch.manual_seed(1)
    batch = torch.randn(8, 12)
    model(batch).square().mean().backward()
    optim.step()


def extras() -> dict[str, torch.Tensor]:
    """Full tensors for the DTensor and plain entries (a single process builds the same)."""
    torch.manual_seed(2)
    return {"rows": torch.randn(9, 5), "cols": torch.randn(4, 7), "replicated": torch.randn(3)}


def flat_optimizer(model: torch.nn.Module, optim: torch.optim.Optimizer) -> dict[str, Any]:
    """name.state_key -> value: comparable between an FSDP run and a plain one."""
    names = {id(p): n for n, p in model.named_parameters()}
    return {
        f"{names[id(p)]}.{k}": v.full_tensor() if hasattr(v, "full_tensor") else v
        for p, state in optim.state.items()
        for k, v in state.items()
    }


def _state(model: torch.nn.Module, optim: torch.optim.Optimizer, mesh: Any) -> dict[str, Any]:
    full = extras()
    return {
        "model": get_model_state_dict(model),
        "optim": get_optimizer_state_dict(model, optim),
        "rows": distribute_tensor(full["rows"], mesh, [Shard(0)]),
        "cols": distribute_tensor(full["cols"], mesh, [Shard(1)]),
        "replicated": distribute_tensor(full["replicated"], mesh, [Replicate()]),
        "plain": torch.arange(5, dtype=torch.int64),
        "step": 3,
        "note": "hello",
    }


def load(
    model: torch.nn.Module, optim: torch.optim.Optimizer, mesh: Any, checkpoint: str
) -> dict[str, Any]:
    """Load ``checkpoint`` into the model, optimizer and extras; return their full values.

    ``mesh`` None: one process without torch.distributed initialised (DCP's no-dist mode).
    """
    if mesh is None:
        state = _plain_state(model, optim)
    else:
        state = _state(model, optim, mesh)  # the structure to fill (optimizer state created)
        for key in ("rows", "cols", "replicated"):
            zeros = torch.zeros_like(extras()[key])
            state[key] = distribute_tensor(zeros, mesh, state[key].placements)
    state.update(plain=torch.zeros(5, dtype=torch.int64), step=0, note="")
    dcp.load(state, storage_reader=Reader(checkpoint))
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, optim, state["optim"])
    full = (lambda t: t) if mesh is None else (lambda t: t.full_tensor())
    return {
        "model": get_model_state_dict(model, options=FULL),
        "optim": flat_optimizer(model, optim),
        **{k: full(state[k]) for k in ("rows", "cols", "replicated")},
        "plain": state["plain"],
        "step": state["step"],
        "note": state["note"],
    }


def _plain_state(model: torch.nn.Module, optim: torch.optim.Optimizer) -> dict[str, Any]:
    return {
        "model": get_model_state_dict(model),
        "optim": get_optimizer_state_dict(model, optim),
        **{k: torch.zeros_like(v) for k, v in extras().items()},
    }


class _DiesAfterWriting(Writer):
    def write_data(self, plan: Any, planner: Any) -> Any:
        future = super().write_data(plan, planner)
        if dist.get_rank() == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return future


def main(action: str, checkpoint: str, out: str) -> None:
    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    model = build()
    fully_shard(model, mesh=mesh)
    optim = optimizer(model)
    if action in ("save", "save-killed", "save-native"):
        train_step(model, optim)
        writers: dict[str, Callable[[str], StorageWriter]] = {
            "save": Writer,
            "save-killed": _DiesAfterWriting,
            "save-native": FileSystemWriter,
        }
        writer = writers[action](checkpoint)
        if action == "save-killed":
            for p in model.parameters():  # a different state, so a mix would show
                p.data.add_(1.0)
        dcp.save(_state(model, optim, mesh), storage_writer=writer)
    else:
        gathered = load(model, optim, mesh, checkpoint)
        if dist.get_rank() == 0:
            statevault.save(gathered, out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])
    # Every rank is past the barrier and the group is destroyed: the work is done and judged
    # by the parent from the files. Skip the interpreter's teardown of torch's C++ threads,
    # which once aborted a rank here ("terminate called without an active exception", after
    # the barrier, in a fresh-clone CI run) and is not what these tests are about.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
