"""Test-session settings shared by every test module."""

from __future__ import annotations

import os
import tempfile

import pytest

# Hypothesis keeps caches in ./.hypothesis unless told otherwise; tests must not write into
# the working tree, so point it at the system temp directory (read lazily by hypothesis).
os.environ.setdefault(
    "HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(tempfile.gettempdir(), "statevault-hypothesis")
)


def pytest_addoption(parser: pytest.Parser) -> None:
    # the reader fuzz (tests/test_fuzz_readers.py) runs a few seconds by default; this runs
    # it for as many examples as asked, e.g. --fuzz-examples=20000 (minutes)
    parser.addoption(
        "--fuzz-examples",
        type=int,
        default=None,
        help="examples per reader fuzz test (default: a few seconds' worth)",
    )
