"""Our metadata's decoder: every refusal asserted whole (file, what is damaged, the numbers),
on headers built directly, without a file or a digest to compute."""

from __future__ import annotations

import json
from typing import Any

import pytest

from statevault.errors import HeaderError
from statevault.fileformat import checksums, format1
from statevault.fileformat import metadata as metadata_module
from statevault.fileformat.container import Header
from statevault.fileformat.metadata import (
    LEAD,
    TREE_KEY,
    VAULT_KEY,
    SlottedHeader,
    VaultInfo,
    decode,
    encoded_members,
    signed_digest,
    user_metadata,
)
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
        (format2(version=4), "written by a newer statevault (format 4, this one reads up to 3); upgrade statevault to read it"),
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


# Format 1 (still read): the digest is over canonical JSON, computed here by format1 itself.
def format1_header(vault: dict[str, Any], table: TensorTable = TABLE, **user: str) -> Header:
    stored = {k: v for k, v in vault.items() if k != "header_digest"}
    digest = format1.header_digest(list(table.values()), dict(user), stored)
    text = json.dumps({"header_digest": digest, **stored})
    return Header(table, {VAULT_KEY: text, **user}, 100, table.ends[-1])


def format1_refusal(vault: dict[str, Any], table: TensorTable = TABLE) -> str:
    with pytest.raises(HeaderError) as caught:
        decode(format1_header(vault, table), source=SOURCE)
    assert type(caught.value) is HeaderError
    return str(caught.value)


def test_a_format1_header_decodes_whole() -> None:
    vault = {
        "version": 1,
        "tree": {"list": [{"tensor": "w"}]},
        "checksums": {"digests": {"w": "aa" * 8, "c": "bb" * 8}},
        "aliases": {"tied": "w"},
        "dtypes": {"c": "complex128"},
    }
    header = format1_header(vault, **{TREE_KEY: "a user's own key in format 1"})
    info = decode(header, source=SOURCE)
    digest = json.loads(header.metadata[VAULT_KEY])["header_digest"]
    assert info == VaultInfo(
        version=1,
        tree={"list": [{"tensor": "w"}]},
        checksums={"w": "aa" * 8, "c": "bb" * 8},
        aliases={"tied": "w"},
        dtypes={"c": "complex128"},
        header_digest=digest,
        has_tree=True,
    )


def test_members_left_out_are_empty_in_either_format() -> None:
    bare1 = decode(format1_header({"version": 1}), source=SOURCE)
    assert (dict(bare1.checksums), dict(bare1.aliases), dict(bare1.dtypes)) == ({}, {}, {})
    assert (bare1.tree, bare1.has_tree) == (None, False)
    no_digests = decode(format1_header({"version": 1, "checksums": {"digests": {}}}), source=SOURCE)
    assert dict(no_digests.checksums) == {}
    bare2 = decode(header({"header_digest": DIGEST, "version": 2}), source=SOURCE, signed=SIGNED)
    assert (dict(bare2.checksums), dict(bare2.aliases), dict(bare2.dtypes)) == ({}, {}, {})


def test_format1_refusals_are_said_whole() -> None:
    assert format1_refusal({"version": 1, "checksums": "x"}) == (
        f"{SOURCE}: statevault checksums entry is damaged; header damaged"
    )
    assert format1_refusal({"version": 1, "checksums": {"digests": [1]}}) == (
        f"{SOURCE}: statevault checksum table is damaged; header damaged"
    )
    assert format1_refusal({"version": 1, "aliases": {"a": 1}}) == (
        f"{SOURCE}: statevault alias table is damaged; header damaged"
    )
    assert format1_refusal({"version": 1, "dtypes": ["c"]}) == (
        f"{SOURCE}: statevault dtype table is damaged; header damaged"
    )
    assert format1_refusal({"version": 1, "checksums": {"digests": {"w": "aa" * 8}}}) == (
        f"{SOURCE}: checksum table does not cover tensors ['c']; header damaged"
    )


def test_a_checksum_table_names_at_most_five_uncovered_tensors() -> None:
    seven = TensorTable.from_entries([TensorEntry(f"t{i}", "U8", (1,), i, i + 1) for i in range(7)])
    vault = {"version": 1, "checksums": {"digests": {"t6": "aa" * 8, "zz": "bb" * 8}}}
    assert format1_refusal(vault, seven) == (
        f"{SOURCE}: checksum table does not cover tensors ['t0', 't1', 't2', 't3', 't4']; "
        "header damaged"
    )


def test_a_format1_digest_mismatch_gives_both_digests() -> None:
    good = format1_header({"version": 1, "aliases": {}})
    vault = json.loads(good.metadata[VAULT_KEY])
    recorded = vault["header_digest"]
    vault["aliases"] = {"tied": "w"}  # altered after saving
    altered = Header(TABLE, {VAULT_KEY: json.dumps(vault)}, 100, 40)
    actual = format1.header_digest(
        list(TABLE.values()), {}, {k: v for k, v in vault.items() if k != "header_digest"}
    )
    with pytest.raises(HeaderError) as caught:
        decode(altered, source=SOURCE)
    assert str(caught.value) == (
        f"{SOURCE}: header checksum mismatch (expected {recorded}, found {actual}): tensor "
        "names, shapes, offsets or metadata were altered after saving; the file is damaged"
    )
    assert recorded != actual


def test_format1_metadata_too_deep_to_rehash_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    def too_deep(*args: object) -> str:
        raise RecursionError

    monkeypatch.setattr(format1, "header_digest", too_deep)
    with pytest.raises(HeaderError) as caught:
        decode(header({"header_digest": DIGEST, "version": 1}), source=SOURCE)
    assert str(caught.value) == f"{SOURCE}: statevault metadata is nested too deeply"


def test_metadata_too_large_to_parse_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    exhausted = MemoryError()

    def loads(*args: object, **kwargs: object) -> Any:
        raise exhausted

    monkeypatch.setattr(metadata_module.json, "loads", loads)
    with pytest.raises(HeaderError) as caught:
        decode(header("{" + " " * 1500 + "}"), source=SOURCE, signed=SIGNED)
    assert str(caught.value) == (
        f"{SOURCE}: parsing the 1,502-character statevault metadata ran out of memory; it is "
        "hostile or larger than this process can hold"
    )
    assert caught.value.__cause__ is exhausted


def test_escaping_inside_a_json_string() -> None:
    assert metadata_module._escaped("plain ü") == "plain ü"
    assert metadata_module._escaped("back\\slash") == "back\\\\slash"
    assert metadata_module._escaped('q"uote') == 'q\\"uote'
    assert metadata_module._escaped("tab\t") == "tab\\t"


def test_the_tree_member_is_written_when_there_is_a_tree_even_a_null_one() -> None:
    assert encoded_members(VaultInfo()) == {"aliases": "{}", "dtypes": "{}"}
    assert encoded_members(VaultInfo(has_tree=True)) == {
        "aliases": "{}",
        "dtypes": "{}",
        "tree": "null",
    }
    assert encoded_members(VaultInfo(tree={"list": []}))["tree"] == '{"list":[]}'


def test_signed_digest_reads_any_bytes_in_the_digest_slot() -> None:
    assert signed_digest(bytes(8), b"{}") is None
    exact = LEAD + b"\xff" * 16
    recorded, actual = signed_digest(bytes(8), exact)  # type: ignore[misc]
    assert recorded == "\ufffd" * 16
    assert actual == checksums.digest(bytes(8) + LEAD + b"0" * 16)
    assert signed_digest(bytes(8), exact[:-1]) is None


def test_put_needs_a_header_saved_with_checksums() -> None:
    entries = [TensorEntry("w", "F32", (2,), 0, 8)]
    header_ = SlottedHeader(encoded_members(VaultInfo()), entries, {}, checksum=False)
    with pytest.raises(AssertionError) as caught:
        header_.put(0, "0" * 16)
    assert str(caught.value) == "put() of a header saved without checksums"
