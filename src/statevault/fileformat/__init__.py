"""The file format, pure: bytes <-> header, our metadata, the tree codec, checksums, dtypes.

No file or socket I/O happens here. May import: ``statevault.errors`` only.
"""
