"""What an operation found, as frozen data with text and JSON renderings.

May import: ``statevault.errors`` (never ``loading``: loading builds these values, reports
render them).
"""
