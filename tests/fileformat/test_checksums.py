"""Checksums: golden digests and the one canonical JSON serialisation we hash.

Both sides of a round trip use these functions, so a change to either would pass every
save-then-verify test; golden values pin what files already on disk hold.
"""

from __future__ import annotations

import math

import pytest

from statevault.fileformat.checksums import (
    ALGORITHM,
    DIGEST_CHARS,
    PLACEHOLDER,
    canonical_json,
    digest,
    new_hasher,
)


def test_digests_are_xxh3_64_in_lower_hex() -> None:
    assert (ALGORITHM, DIGEST_CHARS, PLACEHOLDER) == ("xxh3-64", 16, "0000000000000000")
    assert digest(b"") == "2d06800538d394c2"
    assert digest(b"statevault") == "c9c05e3c8fccf180"
    assert digest(memoryview("é".encode())) == "f7940a006cf10cb3"


def test_streaming_digest_equals_the_one_call_digest() -> None:
    hasher = new_hasher()
    hasher.update(b"state")
    hasher.update(b"vault")
    assert hasher.hexdigest() == digest(b"statevault")


def test_canonical_json_sorts_keys_keeps_non_ascii_and_drops_spaces() -> None:
    value = {"zeta": [1, 2.5], "älpha": {"b": None, "a": "日本"}}
    assert canonical_json(value) == '{"zeta":[1,2.5],"älpha":{"a":"日本","b":null}}'


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_canonical_json_refuses_nan_and_infinities(number: float) -> None:
    # json.dumps would write NaN/Infinity, which no JSON parser but Python's reads back
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        canonical_json({"loss": number})
