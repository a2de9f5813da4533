"""statevault as a storage backend of ``torch.distributed.checkpoint`` (DCP).

DCP plans who writes what across ranks, dedupes replicated tensors and reshards on load;
``Writer`` and ``Reader`` store its bytes as one checksummed statevault file per rank and
a JSON index written last (no pickle), so a directory is committed whole or not at all,
and ``statevault inspect/verify/diff/convert`` read it without ``torch.distributed``.

The package sits above ``tools`` in the layering (it saves through ``saving`` and reads
with the engine); nothing in statevault imports it, so importing ``statevault`` does not
import ``torch.distributed``. See docs/distributed.md.
"""

from __future__ import annotations

from statevault.dcp.reader import Reader
from statevault.dcp.writer import Writer

__all__ = ["Reader", "Writer"]
