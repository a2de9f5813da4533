"""``statevault demo``: the PyTorch tutorial flow, for real, with statevault.

Define a tiny logistic-regression model, train it, save it, build a fresh instance, load the
state back (and build one straight from the file with build_model) and check the predictions
are identical; then save a full training checkpoint
(model + optimizer + epoch + RNG state), resume from it and check the result is bit-identical
to a run that was never interrupted. Part 3 (demo_training.py) kills a training run with
SIGKILL during an async CheckpointManager save and resumes it bit-exactly. May be imported
by: ``statevault.cli`` only.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import click
import torch
from torch import nn

import statevault

FEATURES = 6
SAMPLES = 256
BATCH = 32


class Model(nn.Module):
    """The tutorial's model: one linear layer followed by a sigmoid."""

    def __init__(self, input_feat: int) -> None:
        super().__init__()
        self.linear = nn.Linear(input_feat, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.linear(x))


def _synthetic_data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1234)
    features = torch.randn(SAMPLES, FEATURES, generator=generator)
    true_weights = torch.randn(FEATURES, 1, generator=generator)
    labels = (features @ true_weights > 0).float()
    return features, labels


def _train(
    model: Model,
    optimizer: torch.optim.Optimizer,
    data: tuple[torch.Tensor, torch.Tensor],
    epochs: range,
) -> float:
    """Mini-batch training; shuffling draws on torch's global RNG, so resuming needs its state."""
    features, labels = data
    loss_fn = nn.BCELoss()
    loss = torch.tensor(0.0)
    for _ in epochs:
        order = torch.randperm(SAMPLES)
        for start in range(0, SAMPLES, BATCH):
            batch = order[start : start + BATCH]
            optimizer.zero_grad()
            loss = loss_fn(model(features[batch]), labels[batch])
            loss.backward()
            optimizer.step()
    return float(loss.detach())


def _same_parameters(a: nn.Module, b: nn.Module) -> bool:
    return all(
        torch.equal(x, y)
        for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def _describe(path: Path, echo: Callable[[str], None]) -> None:
    with statevault.Checkpoint(path) as checkpoint:
        echo(f"  {path.name}: {path.stat().st_size:,} bytes, {len(checkpoint.tensors)} tensor(s)")
        for name, info in checkpoint.tensors.items():
            echo(
                f"    {name:<38} {info.dtype_name:<8} {list(info.shape)!s:<10} {info.nbytes:>6} B  xxh3 {info.checksum}"
            )


def run_demo(directory: Path, echo: Callable[[str], None]) -> bool:
    """Run both halves of the demo, reporting through ``echo``; True when everything matched."""
    data = _synthetic_data()
    torch.manual_seed(0)

    echo("1. Define, train, save, load into a fresh model")
    model = Model(input_feat=FEATURES)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    loss = _train(model, optimizer, data, range(5))
    echo(f"  trained 5 epochs, loss {loss:.4f}")
    model_path = directory / "model.safetensors"
    statevault.save(model, model_path)
    _describe(model_path, echo)
    fresh = Model(input_feat=FEATURES)
    report = statevault.load_into(fresh, model_path)
    echo(f"  load_into: {report}")
    with torch.no_grad():
        before, after = model(data[0]), fresh(data[0])
    same_predictions = torch.equal(before, after)
    echo(f"  first predictions, trained model: {[round(p, 4) for p in before[:4, 0].tolist()]}")
    echo(f"  first predictions, fresh model:   {[round(p, 4) for p in after[:4, 0].tolist()]}")
    echo(f"  predictions of the fresh model identical: {'yes' if same_predictions else 'NO'}")
    # the same model built straight from the file: no random init, weights in memory once
    built = statevault.build_model(Model, model_path, kwargs={"input_feat": FEATURES})
    with torch.no_grad():
        same_built = torch.equal(before, built(data[0]))
    echo(
        f"  build_model: predictions of the built model identical: {'yes' if same_built else 'NO'}"
    )
    same_predictions = same_predictions and same_built

    echo("2. Save a full training checkpoint, resume, compare with an uninterrupted run")
    checkpoint_path = directory / "checkpoint.safetensors"
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": 5,
        "rng_state": torch.get_rng_state(),
    }
    statevault.save(state, checkpoint_path, metadata={"description": "statevault demo checkpoint"})
    _describe(checkpoint_path, echo)
    _train(model, optimizer, data, range(5, 10))  # the uninterrupted run continues

    restored = statevault.load(checkpoint_path)  # checksums verified while reading
    resumed = Model(input_feat=FEATURES)
    statevault.load_into(resumed, restored["model"])
    resumed_optimizer = torch.optim.SGD(resumed.parameters(), lr=0.5, momentum=0.9)
    resumed_optimizer.load_state_dict(restored["optimizer"])
    torch.set_rng_state(restored["rng_state"])
    loss = _train(resumed, resumed_optimizer, data, range(restored["epoch"], 10))
    same_training = _same_parameters(model, resumed)
    echo(f"  resumed at epoch {restored['epoch']}, trained to epoch 10, loss {loss:.4f}")
    echo(f"  optimizer state keys: {sorted(restored['optimizer'])}, checksums verified on load")
    echo(f"  parameters identical to the uninterrupted run: {'yes' if same_training else 'NO'}")
    return same_predictions and same_training


@click.command()
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where to write the demo files (default: a new temporary directory).",
)
def demo(directory: Path | None) -> None:
    """Train, save, load into a fresh model, resume training: show it all matches."""
    if directory is None:
        directory = Path(tempfile.mkdtemp(prefix="statevault-demo-"))
    directory.mkdir(parents=True, exist_ok=True)
    click.echo(f"statevault demo: writing files to {directory}")
    if not run_demo(directory, click.echo):
        raise click.ClickException("the reloaded state did not match (see above)")
    from statevault.cli.demo_training import run_resumable_demo  # it imports this module

    click.echo("3. A training run killed mid-save (SIGKILL) resumes from its latest valid step")
    if not run_resumable_demo(directory, click.echo):
        raise click.ClickException("the resumed run did not match (see above)")
    click.echo("All matched: saved, reloaded and resumed state is identical.")
