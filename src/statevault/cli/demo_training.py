"""``statevault demo``, part 3: a training run killed by SIGKILL mid-save resumes bit-exactly.

A child process trains the demo model step by step with a CheckpointManager, saving every
step asynchronously, and kills itself (SIGKILL, nothing flushed or cleaned) right after an
async save returns, while that save is being written. This process then resumes from the
newest valid step and trains to the end: its loss curve and final weights must equal those
of a run that was never interrupted. Uses only the public API.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import statevault
from statevault.cli.demo import BATCH, FEATURES, SAMPLES, Model, _synthetic_data

STEPS = 16
KILL_AFTER = 9  # the child dies right after save(KILL_AFTER, blocking=False) returns


def _fresh() -> tuple[Model, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = Model(input_feat=FEATURES)
    return model, torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)


def _step(model: Model, optimizer: torch.optim.Optimizer, data: Any) -> float:
    features, labels = data
    batch = torch.randperm(SAMPLES)[:BATCH]  # draws on the global RNG: resuming needs it
    optimizer.zero_grad()
    loss = nn.BCELoss()(model(features[batch]), labels[batch])
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def _state(model: Model, optimizer: torch.optim.Optimizer, step: int) -> dict[str, Any]:
    return {
        "model": model.state_dict(),
        "optim": optimizer.state_dict(),
        "rng": torch.get_rng_state(),
        "step": step,
    }


def killed_run(directory: str) -> None:
    """The child: train and save every step, then die by SIGKILL during an async save."""
    model, optimizer = _fresh()
    data = _synthetic_data()
    manager = statevault.CheckpointManager(directory, max_to_keep=3)
    for step in range(STEPS):
        loss = _step(model, optimizer, data)
        print(f"{step} {loss!r}", flush=True)
        manager.save(step, _state(model, optimizer, step), metrics={"loss": loss}, blocking=False)
        if step == KILL_AFTER:
            os.kill(os.getpid(), signal.SIGKILL)


def _uninterrupted() -> tuple[list[float], Model]:
    model, optimizer = _fresh()
    data = _synthetic_data()
    return [_step(model, optimizer, data) for _ in range(STEPS)], model


def run_resumable_demo(directory: Path, echo: Callable[[str], None]) -> bool:
    """Kill a run mid-save, resume it, compare with an uninterrupted run; True if identical."""
    reference, reference_model = _uninterrupted()
    run_dir = directory / "run"
    package_root = str(Path(statevault.__file__).resolve().parents[1])
    python_path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from statevault.cli.demo_training import killed_run; "
            "killed_run(sys.argv[1])",
            str(run_dir),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": python_path},
        check=False,
    )
    killed = child.returncode == -signal.SIGKILL
    echo(
        f"  training run killed by SIGKILL during the async save of step {KILL_AFTER}: "
        f"{'yes' if killed else 'NO (exit ' + str(child.returncode) + ')'}"
    )
    model, optimizer = _fresh()
    with statevault.CheckpointManager(run_dir, max_to_keep=3) as manager:
        steps = ", ".join(f"{i.step}" for i in manager.steps())
        restored = manager.restore(into={"model": model, "optim": optimizer})
        echo(f"  committed steps found: {steps}; resuming from step {restored.step} (verified)")
        torch.set_rng_state(restored.state["rng"])
        data = _synthetic_data()
        resumed = [_step(model, optimizer, data) for _ in range(restored.step + 1, STEPS)]
    before = [float(line.split()[1]) for line in child.stdout.splitlines()]
    curve = before[: restored.step + 1] + resumed
    for step in range(restored.step - 1, min(restored.step + 4, STEPS)):
        mark = "  <- resumed here" if step == restored.step + 1 else ""
        echo(
            f"    step {step:>2}: loss {curve[step]:.6f} (uninterrupted {reference[step]:.6f}){mark}"
        )
    same_curve = curve == reference
    same_weights = all(
        torch.equal(a, b)
        for a, b in zip(
            model.state_dict().values(), reference_model.state_dict().values(), strict=True
        )
    )
    echo(
        f"  loss curve identical to the uninterrupted run, bit for bit: {'yes' if same_curve else 'NO'}"
    )
    echo(f"  final weights identical: {'yes' if same_weights else 'NO'}")
    return killed and same_curve and same_weights
