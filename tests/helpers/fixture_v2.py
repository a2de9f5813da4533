"""The state stored in ``tests/data/format2.safetensors``, the golden file of what ``save``
writes (format 2), rebuilt here from deterministic values.

``tests/fileformat/test_format_versions.py`` saves :func:`expected_state` with
:data:`METADATA` and compares the bytes with the committed file, so any change to the bytes
``save`` writes (header encoder, layout, digests) fails there. The state covers what the
header must carry: nested dicts with int keys, a tied weight (an alias), a dtype stored under
another code (complex128), non-ASCII names and metadata, numpy values and several dtypes.

Regenerate it, only for a deliberate format change (bump ``FORMAT_VERSION`` then), with::

    PYTHONPATH=src:tests python -m helpers.fixture_v2 tests/data/format2.safetensors
"""

from __future__ import annotations

import sys
from typing import Any

import numpy
import torch

METADATA = {"run": "golden ✓", "note": 'quote " and backslash \\', "ключ": "значение"}


def expected_state() -> dict[str, Any]:
    weight = torch.arange(12, dtype=torch.float32).reshape(3, 4) / 8
    model = {
        "embed.weight": weight,
        "head.weight": weight,  # tied: stored once, as an alias
        "norm.bias": torch.linspace(-1, 1, 4, dtype=torch.bfloat16),
        "half": torch.tensor([0.5, -2.0, 65504.0], dtype=torch.float16),
        "rotor": torch.arange(3).to(torch.complex128) * (1 + 2j),  # stored as F64 pairs
        "mask": torch.tensor([True, False, True]),
        "codes": torch.arange(5, dtype=torch.uint8),
        "steps": torch.tensor(7, dtype=torch.int64),
        "empty": torch.zeros(0, 3, dtype=torch.int32),
        "größe": torch.tensor([1.0, 2.0], dtype=torch.float64),
    }
    return {
        "model": model,
        "optim": {
            "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.full((3, 4), 0.25)}},
            "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0]}],
        },
        "rng": {
            "numpy": ("MT19937", numpy.arange(4, dtype=numpy.uint32), 2, 0, 0.0),
            "gauss": numpy.float64(0.125),
        },
        "epoch": 4,
        "best": float("inf"),
        "name": "ünïcode run",
        "done": None,
    }


def main(path: str) -> None:
    import statevault

    statevault.save(expected_state(), path, metadata=METADATA)


if __name__ == "__main__":
    main(sys.argv[1])
