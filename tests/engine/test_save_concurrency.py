"""A save that succeeds writes a file that verifies, whatever other threads do meanwhile.

Another thread updating the saved tensors in place during ``save`` (an optimizer step, an
EMA update) must not leave digests that disagree with the bytes on disk.
"""

from __future__ import annotations

import threading
from pathlib import Path

import torch

import statevault


def _state() -> dict[str, torch.Tensor]:
    # Large tensors are written in several chunks, small ones gathered into runs: both paths.
    state = {f"big.{i}": torch.zeros(700_000) for i in range(2)}  # 2.8 MB each
    state |= {f"small.{i}": torch.zeros(2_000) for i in range(300)}  # 8 KB each
    return state


def test_saves_during_in_place_updates_always_verify(tmp_path: Path) -> None:
    state = _state()
    tensors = list(state.values())
    stop = threading.Event()
    steps = [0]

    def mutate() -> None:
        # In-place updates release the GIL, so they run while save hashes and writes.
        while not stop.is_set():
            for tensor in tensors:
                tensor.add_(1.0)
            steps[0] += 1

    mutator = threading.Thread(target=mutate)
    mutator.start()
    try:
        saved = []
        for attempt in range(20):
            path = tmp_path / f"ckpt{attempt % 2}.safetensors"
            statevault.save(state, path)
            saved.append(statevault.load(path))  # verify=True: any digest mismatch raises
    finally:
        stop.set()
        mutator.join()
    assert steps[0] > 20  # the updates really ran during the saves
    for loaded in saved:
        assert loaded.keys() == state.keys()
        # Every element holds a value the tensor had during the save: a whole step count.
        for name, tensor in loaded.items():
            assert torch.equal(tensor, tensor.round()), name
            assert bool((tensor >= 0).all()) and bool((tensor <= steps[0]).all()), name


def test_verified_copies_are_unchanged_by_later_updates(tmp_path: Path) -> None:
    """Without concurrent updates a save is exact: the file holds the tensors' values."""
    state = _state()
    for index, tensor in enumerate(state.values()):
        tensor.fill_(float(index))
    path = tmp_path / "ckpt.safetensors"
    statevault.save(state, path)
    for tensor in state.values():
        tensor.add_(1.0)  # after the save: must not reach the file
    loaded = statevault.load(path)
    for index, (name, tensor) in enumerate(loaded.items()):
        assert bool((tensor == float(index)).all()), name
