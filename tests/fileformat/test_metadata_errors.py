"""Our metadata's decoder: every refusal asserted whole (file, what is damaged, the numbers),
on headers built directly, without a file or a digest to compute."""

from __future__ import annotations

import json
from typing import Any

import pytest

from statevault.errors import HeaderError
from statevault.fileformat.container import Header
from statevault.fileformat.metadata import TREE_KEY, VAULT_KEY, VaultInfo, decode, user_metadata
from statevault.fileformat.table import TensorEntry, TensorTable

SOURCE = "m.safetensors"
DIGEST = "0123456789abcdef"
SIGNED = (DIGEST, DIGEST)
TABLE = TensorTable.from_entries(
    [TensorEntry("w", "F32", (2,), 0, 8), TensorEntry("c", "F64", (2, 2), 8, 40)]
)
GOOD_PACKED = "aa" * 8 + "bb" * 8


def header(vault: Any, **extra: str) -> Header:
    text = vault if isinstance(vault, str) else json.dumps(vault)
    return Header(TABLE, {VAULT_KEY: text, **extra}, 100, 40)


def format2(**changes: Any) -> dict[str, Any]:
    vault: dict[str, Any] = {
        "header_digest": DIGEST,
        "version": 2,
        "aliases": {},
        "dtypes": {},
        "checksums": {"algorithm": "xxh3-64", "packed": GOOD_PACKED},
    }
    vault.update(changes)
    return {k: v for k, v in vault.items() if v is not None}


def refusal(vault: Any, signed: tuple[str, str] | None = SIGNED, **extra: str) -> str:
    with pytest.raises(HeaderError) as caught:
        decode(header(vault, **extra), source=SOURCE, signed=signed)
    assert type(caught.value) is HeaderError
    message = str(caught.value)
    assert message.startswith(f"{SOURCE}: ")
    return message[len(SOURCE) + 2 :]


def test_a_format2_header_decodes_whole() -> None:
    vault = format2(aliases={"tied": "w"}, dtypes={"c": "complex128"})
    info = decode(header(vault, **{TREE_KEY: "null"}), source=SOURCE, signed=SIGNED)
    assert (info.version, info.header_digest, info.has_tree, info.tree_text) == (
        2,
        DIGEST,
        True,
        "null",
    )
    assert dict(info.checksums) == {"w": "aa" * 8, "c": "bb" * 8} and info.has_checksums
    assert (dict(info.aliases), dict(info.dtypes)) == ({"tied": "w"}, {"c": "complex128"})
    bare = decode(header(format2(checksums=None)), source=SOURCE, signed=SIGNED)
    assert (dict(bare.checksums), bare.has_tree, bare.tree_text) == ({}, False, None)
    assert not bare.has_checksums


def test_a_plain_file_has_no_vault_info() -> None:
    assert decode(Header(TABLE, {"k": "v"}, 100, 40), source=SOURCE) == VaultInfo()
    assert user_metadata({VAULT_KEY: "x", TREE_KEY: "t", "k": "v"}, 2) == {"k": "v"}
    assert user_metadata({VAULT_KEY: "x", TREE_KEY: "t", "k": "v"}, 1) == {TREE_KEY: "t", "k": "v"}
    assert user_metadata({VAULT_KEY: "x", TREE_KEY: "t"}) == {TREE_KEY: "t"}


def test_statevault_metadata_under_another_key_is_refused() -> None:
    moved = json.dumps(format2())
    with pytest.raises(HeaderError) as caught:
        decode(Header(TABLE, {"statevaulx": moved}, 100, 40), source=SOURCE)
    assert str(caught.value) == (
        f"{SOURCE}: metadata key 'statevaulx' holds statevault metadata, expected under "
        "'statevault'; the header is damaged"
    )
    for lookalike in ('{"header_digest":1}', '{"version":2}', ' {"header_digest":"version":'):
        assert decode(Header(TABLE, {"k": lookalike}, 100, 40), source=SOURCE) == VaultInfo()


@pytest.mark.parametrize(
    ("vault", "message"),
    [
        ("{", "statevault metadata is not valid JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1)); header damaged"),
        ('{"version":NaN}', "statevault metadata is not valid JSON (non-standard JSON constant NaN); header damaged"),
        ("[1]", "statevault metadata must be a JSON object; header damaged"),
        ({"header_digest": DIGEST}, "statevault metadata has no valid format version"),
        (format2(version=0), "statevault metadata has no valid format version"),
        (format2(version=True), "statevault metadata has no valid format version"),
        (format2(version="2"), "statevault metadata has no valid format version"),
        (format2(version=3), "written by a newer statevault (format 3, this one reads up to 2); upgrade statevault to read it"),
        (format2(header_digest=None), "statevault metadata lacks its header digest; header damaged"),
        (format2(header_digest=7), "statevault metadata lacks its header digest; header damaged"),
        (format2(checksums={"algorithm": "md5", "packed": GOOD_PACKED}), "statevault checksums entry is damaged: algorithm 'md5' (expected 'xxh3-64') or no digests; header damaged"),
        (format2(checksums={"algorithm": "xxh3-64"}), "statevault checksums entry is damaged: algorithm 'xxh3-64' (expected 'xxh3-64') or no digests; header damaged"),
        (format2(checksums="x"), "statevault checksums entry is damaged: algorithm None (expected 'xxh3-64') or no digests; header damaged"),
        (format2(checksums={"algorithm": "xxh3-64", "packed": GOOD_PACKED + "0"}), "statevault checksums entry is damaged: 33 characters of digests for 2 tensors (expected 32: 16 each); header damaged"),
        (format2(checksums={"algorithm": "xxh3-64", "packed": GOOD_PACKED.upper()}), "statevault checksums entry is damaged: digests that are not lower-case hex; header damaged"),
        (format2(aliases=["w"]), "statevault alias table is damaged; header damaged"),
        (format2(aliases={"t": 1}), "statevault alias table is damaged; header damaged"),
        (format2(dtypes={"c": 1}), "statevault dtype table is damaged; header damaged"),
        (format2(aliases={"t": "missing"}), "alias 't' -> 'missing' does not resolve; header damaged"),
        (format2(aliases={"c": "w"}), "alias 'c' -> 'w' does not resolve; header damaged"),
        (format2(dtypes={"c": "complex64"}), "tensor 'c' is recorded as dtype 'complex64', which does not fit its stored code F64; header damaged or written by a newer statevault"),
        (format2(dtypes={"c": "quint8"}), "tensor 'c' is recorded as dtype 'quint8', which does not fit its stored code F64; header damaged or written by a newer statevault"),
        (format2(dtypes={"gone": "complex128"}), "tensor 'gone' is recorded as dtype 'complex128', which does not fit a tensor the file does not hold; header damaged or written by a newer statevault"),
    ],
)  # fmt: skip
def test_damaged_statevault_metadata_is_named_whole(vault: Any, message: str) -> None:
    assert refusal(vault) == message


def test_a_format2_header_is_checked_against_its_signed_digest() -> None:
    assert refusal(format2(), signed=None) == (
        "format-2 header does not begin with its header digest; header damaged"
    )
    expected = (
        f"header checksum mismatch (expected {DIGEST}, found ffffffffffffffff): tensor names, "
        "shapes, offsets or metadata were altered after saving; the file is damaged"
    )
    assert refusal(format2(), signed=(DIGEST, "f" * 16)) == expected
    assert refusal(format2(), signed=("f" * 16, "f" * 16)) == (
        "header checksum mismatch (expected 0123456789abcdef, found ffffffffffffffff): tensor "
        "names, shapes, offsets or metadata were altered after saving; the file is damaged"
    )
