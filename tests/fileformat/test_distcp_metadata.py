"""DCP's pickled ``.metadata`` decoded by a restricted unpickler: what torch writes comes
back as checked values; a pickle naming anything else is refused before it is called, and
malformed metadata names the key and field that is wrong."""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp
from click.testing import CliRunner
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import Metadata

import statevault
from statevault.cli import main
from statevault.fileformat.distcp_metadata import DistcpBytes, DistcpTensor, decode

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")


@pytest.fixture
def native(tmp_path: Path) -> Path:
    checkpoint = tmp_path / "native"
    state = {"w": torch.arange(6.0).reshape(2, 3), "i": torch.tensor(3), "note": "hi"}
    dcp.save(state, checkpoint_id=checkpoint)
    return checkpoint


def _trusted(native: Path) -> Metadata:
    """The test's own file, unpickled to be edited (never what statevault does)."""
    with (native / ".metadata").open("rb") as f:
        metadata: Metadata = pickle.load(f)  # written by this test just now
    return metadata


def _rewrite(native: Path, edit: Callable[[Metadata], object]) -> None:
    metadata = _trusted(native)
    edit(metadata)
    (native / ".metadata").write_bytes(pickle.dumps(metadata))


def test_what_torch_writes_decodes_to_checked_values(native: Path) -> None:
    index = decode((native / ".metadata").read_bytes(), source="m")
    w = index.items["w"]
    assert isinstance(w, DistcpTensor)
    assert (w.dtype, w.shape) == (torch.float32, (2, 3))
    assert [(c.offsets, c.sizes, c.stored.file) for c in w.chunks] == [
        ((0, 0), (2, 3), "__0_0.distcp")
    ]
    assert isinstance(index.items["note"], DistcpBytes)
    assert index.files == ["__0_0.distcp"] and index.version is not None


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


class _Evaluates:
    def __reduce__(self) -> tuple[Any, ...]:
        return (eval, ("1 + 1",))


@pytest.mark.parametrize("where", ["root", "planner_data"])
def test_a_pickle_that_runs_code_is_refused_naming_the_file(
    native: Path, tmp_path: Path, where: str
) -> None:
    marker = tmp_path / "ran"
    if where == "root":
        (native / ".metadata").write_bytes(pickle.dumps(_RunsCode(marker)))
    else:
        _rewrite(native, lambda m: setattr(m, "planner_data", {"w": _RunsCode(marker)}))
    with pytest.raises(statevault.UnsupportedObjectError) as caught:
        statevault.Checkpoint(native)
    assert str(native / ".metadata") in str(caught.value)
    assert "system" in str(caught.value) and "refused" in str(caught.value)
    assert not marker.exists()
    result = CliRunner().invoke(main, ["inspect", str(native)])
    assert result.exit_code == 2 and not marker.exists()


def test_any_builtin_callable_is_refused(native: Path) -> None:
    _rewrite(native, lambda m: setattr(m, "storage_meta", _Evaluates()))
    with pytest.raises(statevault.UnsupportedObjectError, match=r"builtins\.eval"):
        decode((native / ".metadata").read_bytes(), source=str(native / ".metadata"))


def _first_info(metadata: Metadata) -> _StorageInfo:
    return next(iter(metadata.storage_data.values()))  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda m: setattr(_first_info(m), "relative_path", "../elsewhere.distcp"),
            "not a file of this directory",
        ),
        (lambda m: setattr(_first_info(m), "offset", -1), "must be >= 0"),
        (
            lambda m: setattr(m.state_dict_metadata["w"], "size", torch.Size([1, 3])),
            "leaves the tensor",
        ),
        (lambda m: setattr(m, "state_dict_metadata", ["w"]), "lacks state_dict_metadata"),
        (lambda m: m.storage_data.clear(), "no storage_data entry"),
        (lambda m: setattr(m.state_dict_metadata["w"].chunks[0], "sizes", (2,)), "1 dimension"),
    ],
)
def test_malformed_metadata_names_what_is_wrong(
    native: Path, edit: Callable[[Metadata], object], message: str
) -> None:
    _rewrite(native, edit)
    with pytest.raises(statevault.HeaderError, match=message) as caught:
        statevault.Checkpoint(native)
    assert str(native / ".metadata") in str(caught.value)


def test_compressed_items_are_refused_with_what_they_need(native: Path) -> None:
    _rewrite(native, lambda m: setattr(_first_info(m), "transform_descriptors", ["zstd"]))
    with pytest.raises(statevault.UnsupportedObjectError, match="stream extensions"):
        statevault.Checkpoint(native)


@pytest.mark.parametrize("data", [b"", b"\x80\x04", b"not a pickle", pickle.dumps({"a": 1})])
def test_damaged_or_foreign_pickles_are_header_errors(data: bytes) -> None:
    with pytest.raises(statevault.HeaderError, match=r"m\.metadata"):
        decode(data, source="m.metadata")


@pytest.mark.parametrize("name", ["load", "_dynamo", "ops", "Size.__new__"])
def test_torch_globals_other_than_dtypes_and_size_are_refused(name: str) -> None:
    crafted = b"ctorch\n" + name.encode() + b"\n."  # GLOBAL torch <name>, STOP
    with pytest.raises(statevault.UnsupportedObjectError, match=f"torch.{re.escape(name)}"):
        decode(crafted, source="m")


def test_a_dtype_alone_resolves_but_is_no_metadata() -> None:
    with pytest.raises(statevault.HeaderError, match="expected a Metadata, found dtype"):
        decode(b"ctorch\nfloat32\n.", source="m")
