"""``python -m statevault`` runs the CLI."""

from statevault.cli import main

main()
