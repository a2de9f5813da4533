"""The JSON index: round trip, and damaged or hostile indexes refused with our error."""

from __future__ import annotations

import json

import pytest

from statevault.errors import HeaderError
from statevault.fileformat.dcp_index import (
    BytesItem,
    Chunk,
    DcpIndex,
    Place,
    TensorItem,
    decode,
    encode,
    rank_file_name,
)

FILE = rank_file_name(1, "abc123")


def _index() -> DcpIndex:
    return DcpIndex(
        items={
            "w": TensorItem(
                "bfloat16",
                (4, 2),
                (
                    Chunk((0, 0), (2, 2), Place(rank_file_name(0, "abc123"), "w@0,0")),
                    Chunk((2, 0), (2, 2), Place(FILE, "w@2,0")),
                ),
            ),
            "step": BytesItem(Place(FILE, "step")),
        },
        planner_data={"w": ("w",), "opt.0": ("opt", 0)},
        dcp_version="1.0.0",
        save_id="abc123",
    )


def test_round_trip_keeps_everything_including_int_path_keys() -> None:
    index = _index()
    assert decode(encode(index), source="x") == index
    assert index.files == [rank_file_name(0, "abc123"), FILE]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["items"]["w"]["chunks"][0].update(file="../../etc/passwd"), "not a rank file"),
        (lambda d: d["items"]["w"]["chunks"][1].update(offsets=[3, 0]), "outside the shape"),
        (lambda d: d["items"]["w"].update(shape=[4, -2]), "non-negative integers"),
        (lambda d: d["items"]["step"].update(kind="pickle"), "unknown kind"),
        (lambda d: d.update(format="other"), "not a statevault-dcp index"),
        (lambda d: d["planner_data"].update(w="w"), "list of keys"),
    ],
)
def test_damaged_index_names_what_is_wrong(edit, message: str) -> None:
    document = json.loads(encode(_index()))
    edit(document)
    with pytest.raises(HeaderError, match=message) as caught:
        decode(json.dumps(document).encode(), source="ckpt/statevault-dcp.json")
    assert "ckpt/statevault-dcp.json" in str(caught.value)


def test_newer_version_says_upgrade() -> None:
    document = json.loads(encode(_index()))
    document["version"] = 99
    with pytest.raises(HeaderError, match="upgrade statevault"):
        decode(json.dumps(document).encode(), source="x")


@pytest.mark.parametrize("raw", [b"", b"\xff", b"[]", b'{"format": "statevault-dcp"}', b"NaN"])
def test_not_an_index_at_all(raw: bytes) -> None:
    with pytest.raises(HeaderError):
        decode(raw, source="x")
