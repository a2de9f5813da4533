"""Loading state into modules: plan, key mapping, diagnosis, building models.

May import: ``reports``, ``readers``, ``engine``, ``fileformat``, ``statevault.errors``.
"""
