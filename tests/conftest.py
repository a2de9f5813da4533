"""Test-session settings shared by every test module."""

from __future__ import annotations

import os
import tempfile

# Hypothesis keeps caches in ./.hypothesis unless told otherwise; tests must not write into
# the working tree, so point it at the system temp directory (read lazily by hypothesis).
os.environ.setdefault(
    "HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(tempfile.gettempdir(), "statevault-hypothesis")
)
