"""Whole-checkpoint tools behind the CLI: inspect, verify, diff, convert.

May import: ``loading``, ``saving``, ``reports``, ``readers``, ``engine``, ``fileformat``,
``statevault.errors``.
"""
