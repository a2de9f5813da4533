"""The state stored in ``tests/data/format3.safetensors``, the golden file of what ``save``
writes (format 3): format 2's golden state plus tensors that span several blocks.

The file is written with a 64-byte block (``metadata.BLOCK_BYTES`` patched) so that a
kilobyte-sized file pins the per-block digest layout: a tensor of four blocks, one of one
block and a short last one, and an empty one. ``tests/fileformat/test_format_versions.py``
saves :func:`expected_state` the same way and compares the bytes with the committed file.

Regenerate it, only for a deliberate format change (bump ``FORMAT_VERSION`` then), with::

    PYTHONPATH=src:tests python -m helpers.fixture_v3 tests/data/format3.safetensors
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from helpers import fixture_v2

METADATA = fixture_v2.METADATA
BLOCK_BYTES = 64


def expected_state() -> dict[str, Any]:
    state = fixture_v2.expected_state()
    state["blocks"] = {
        "four": torch.arange(64, dtype=torch.float32) / 4,  # 256 bytes: four whole blocks
        "short_last": torch.arange(40, dtype=torch.int16),  # 80 bytes: a block and 16 bytes
    }
    return state


def save(path: str) -> None:
    """Save the golden state with the golden block size."""
    import statevault
    from statevault.fileformat import metadata

    default, metadata.BLOCK_BYTES = metadata.BLOCK_BYTES, BLOCK_BYTES
    try:
        statevault.save(expected_state(), path, metadata=METADATA)
    finally:
        metadata.BLOCK_BYTES = default


if __name__ == "__main__":
    save(sys.argv[1])
