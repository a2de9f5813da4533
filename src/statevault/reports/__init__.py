"""What an operation found, as frozen data with text and JSON renderings.

May import: ``fileformat``, ``statevault.errors``.
"""
