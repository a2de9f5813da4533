"""The file format, pure: bytes <-> header, our metadata, the tree codec and its skeleton,
checksums, dtypes.

No file or socket I/O happens here. May import: ``statevault.errors`` only (and torch, numpy,
xxhash). Imported by: every layer above (engine, readers, saving, loading, tools).
"""
