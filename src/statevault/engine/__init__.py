"""The I/O engine: storage, atomic writes, parallel verified reads, memory and device staging.

Knows byte ranges and digests, never statevault's metadata. May import: ``fileformat``,
``statevault.errors``.
"""
