"""Checkpoint reads: bounded streaming with checksums, and refusing devices this process lacks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import statevault


def _saved(tmp_path: Path) -> tuple[Path, torch.Tensor]:
    tensor = torch.arange(10_000, dtype=torch.float32)
    path = tmp_path / "x.safetensors"
    statevault.save({"x": tensor, "alias": tensor}, path)
    return path, tensor


def test_pieces_are_bounded_and_reassemble_the_tensor(tmp_path: Path) -> None:
    path, tensor = _saved(tmp_path)
    with statevault.Checkpoint(path) as checkpoint:
        pieces = list(checkpoint.stream("alias", chunk_bytes=4096))
    assert [len(p) for p in pieces] == [4096] * 9 + [40_000 - 9 * 4096]
    assert b"".join(pieces) == tensor.numpy().tobytes()


def test_damage_is_reported_after_the_last_piece(tmp_path: Path) -> None:
    path, _ = _saved(tmp_path)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x10  # a bit in the tensor's data
    path.write_bytes(bytes(data))
    with statevault.Checkpoint(path) as checkpoint:
        assert len(b"".join(checkpoint.stream("x", chunk_bytes=1 << 20, verify=False))) == 40_000
        with pytest.raises(statevault.ChecksumMismatchError, match="'x'"):
            list(checkpoint.stream("x", chunk_bytes=1 << 20))


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA"
)
def test_cuda_without_cuda_is_a_clear_error(tmp_path: Path) -> None:
    path, _ = _saved(tmp_path)
    with pytest.raises(statevault.DeviceUnavailableError, match=r"device='cuda'.*device='cpu'"):
        statevault.load(path, device="cuda")
    with pytest.raises(statevault.DeviceUnavailableError, match="not a device torch knows"):
        statevault.load(path, device="floppy")
