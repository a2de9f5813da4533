"""Writers of hostile files for the robustness tests: well-formed containers around
whatever metadata a test wants, with a correct header digest (the digest is no secret, so a
hostile file can always carry one)."""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping

from statevault.fileformat import checksums as _checksum
from statevault.fileformat.dtypes import CODE_ITEMSIZE
from statevault.fileformat.metadata import TREE_KEY

# name -> (dtype code, shape); data is zeros, laid out in this order
DEFAULT_TENSORS: Mapping[str, tuple[str, tuple[int, ...]]] = {"a": ("F32", (2,)), "c": ("I64", ())}


def format2_bytes(
    tree: str | None,
    *,
    aliases: Mapping[str, str] | None = None,
    dtypes: Mapping[str, str] | None = None,
    tensors: Mapping[str, tuple[str, tuple[int, ...]]] = DEFAULT_TENSORS,
) -> bytes:
    """A format-2 file whose tree member is the JSON text ``tree`` (None: no tree)."""
    table = {}
    data = bytearray()
    digests = ""
    for name, (code, shape) in tensors.items():
        size = CODE_ITEMSIZE[code]
        for dim in shape:
            size *= dim
        chunk = bytes(size)
        table[name] = {
            "dtype": code,
            "shape": list(shape),
            "data_offsets": [len(data), len(data) + size],
        }
        data += chunk
        digests += _checksum.digest(chunk)
    members = (
        f',"version":2,"aliases":{json.dumps(dict(aliases or {}))},'
        f'"dtypes":{json.dumps(dict(dtypes or {}))},'
        f'"checksums":{{"algorithm":"xxh3-64","packed":"{digests}"}}}}'
    )

    def build(digest: str) -> bytes:
        vault = json.dumps('{"header_digest":"' + digest + '"' + members)
        extra = f',"{TREE_KEY}":{json.dumps(tree)}' if tree is not None else ""
        metadata = f'{{"statevault":{vault}{extra},"format":"pt"}}'
        body = f'{{"__metadata__":{metadata},{json.dumps(table)[1:]}'.encode()
        body += b" " * (-len(body) % 8)
        return struct.pack("<Q", len(body)) + body

    header = build(_checksum.PLACEHOLDER)
    return build(_checksum.digest(header)) + bytes(data)


def safetensors_bytes(header: str, data: bytes = b"") -> bytes:
    """A plain safetensors container around the header text ``header``, space padded."""
    body = header.encode("utf-8", "surrogatepass")
    body += b" " * (-len(body) % 8)
    return struct.pack("<Q", len(body)) + body + data
