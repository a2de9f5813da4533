"""Side-by-side benchmark of statevault against torch, safetensors and raw limits.

Run ``python -m bench`` (full sizes) or ``python -m bench --quick`` (about a minute).
Every case runs in a fresh (forked) process so that allocator state, page-cache mappings and
peak memory of one case never leak into another. See ``python -m bench --help``.
"""
