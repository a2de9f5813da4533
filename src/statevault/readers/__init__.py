"""One reader type for every checkpoint: single files, shards, torch files, folders, memory.

May import: ``engine``, ``fileformat``, ``statevault.errors``.
"""
