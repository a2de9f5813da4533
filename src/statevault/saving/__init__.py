"""Saving nested state to one atomic, checksummed file.

May import: ``engine``, ``fileformat``, ``statevault.errors``.
"""
