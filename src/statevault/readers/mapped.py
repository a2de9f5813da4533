"""``mmap=True`` for one safetensors file: its tensors as views of a private file mapping.

What ``SafetensorsCheckpoint.mapped`` does, apart from the reader it belongs to: look up
where each wanted tensor lies, map the file once (``engine.mapping``), check the digests of
exactly those tensors from the mapping, and view each one (aliases share one tensor). A
tensor whose bytes are not aligned for its dtype in the file comes back as a copy; every
other one costs no memory of this process until it is written to.

May import: ``engine``, ``statevault.errors``. Imported by ``readers.safetensors_file``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from statevault.engine.mapping import MappedTensor, check_mapped, map_file, view_of
from statevault.errors import CheckpointKindError

if TYPE_CHECKING:
    from statevault.readers.safetensors_file import SafetensorsCheckpoint

logger = logging.getLogger("statevault")


def map_safetensors(
    checkpoint: SafetensorsCheckpoint, names: Sequence[str] | None, *, verify: bool
) -> dict[str, torch.Tensor]:
    """The named tensors (all by default) of ``checkpoint`` as views of one private mapping."""
    wanted = checkpoint.keys() if names is None else list(names)
    aliases, reader = checkpoint.aliases, checkpoint.reader
    if reader.file.remote:
        raise CheckpointKindError(
            f"{checkpoint.label}: is a remote object, which cannot be memory-mapped: "
            "mmap=True maps local files. Load it without mmap=True, or download it once and "
            "map the local copy"
        )
    table = reader.header.entries
    stored = dict.fromkeys(aliases.get(n, n) for n in wanted)
    unknown = [n for n in stored if n not in table]
    if unknown:
        raise KeyError(f"{checkpoint.path}: no tensor named {unknown[0]!r}")
    digests = checkpoint.vault.checksums if verify else {}
    base = reader.header.data_offset
    items = []
    for row in sorted(table.row(name) for name in stored):  # file order: pages in sequence
        name = table.names[row]
        shape, dtype = checkpoint.signature(name)
        start = table.starts[row]
        nbytes = table.ends[row] - start
        items.append(MappedTensor(name, base + start, nbytes, dtype, shape, digests.get(name)))
    whole = map_file(reader.fileno(), needed=checkpoint.file_size, source=checkpoint.path)
    if digests:
        check_mapped(whole, items, block_bytes=reader.block_bytes, source=checkpoint.path)
    tensors: dict[str, torch.Tensor] = {}
    copied = []
    for item in items:
        tensors[item.name], was_copied = view_of(whole, item)
        if was_copied:
            copied.append(item.name)
    if copied:
        logger.debug(
            "%s: %d tensor(s) copied, their bytes not aligned for their dtype in the file "
            "(e.g. %r)",
            checkpoint.path,
            len(copied),
            copied[0],
        )
    return {name: tensors[aliases.get(name, name)] for name in wanted}
