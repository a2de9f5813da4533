"""Fuzzing the header and index parsers: whatever the file holds, opening, verifying,
inspecting and loading it raise only StateVaultError subclasses, and verify is OK exactly
when load succeeds.

Three generators: a structure-aware one building well-formed but hostile safetensors
headers, one building format-2 files around hostile trees and alias tables, and a seeded
byte mutator over the golden files in tests/data plus a format-2 file saved here. The
default run takes a few seconds; ``pytest tests/test_fuzz_readers.py --fuzz-examples=20000``
runs longer. Every input that once failed stays below as an explicit ``@example``.
"""

from __future__ import annotations

import json
import math
import random
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import statevault
from helpers.hostile import format2_bytes
from statevault.errors import StateVaultError
from statevault.fileformat.dtypes import CODE_ITEMSIZE

DATA = Path(__file__).parents[1] / "data"
DEFAULT_EXAMPLES = 60


def fuzz_settings(request: pytest.FixtureRequest) -> settings:
    examples = request.config.getoption("--fuzz-examples") or DEFAULT_EXAMPLES
    return settings(
        max_examples=examples,
        deadline=None,  # no wall-clock asserts: hangs are ruled out by construction
        database=None,  # nothing written into the working tree
        derandomize=examples == DEFAULT_EXAMPLES,  # the default run is the same every time
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def outcome(call: Callable[[], object]) -> StateVaultError | None:
    """None when ``call`` succeeds; its StateVaultError; anything else fails the test."""
    try:
        call()
    except StateVaultError as exc:
        return exc
    return None


def check_readers(path: Path) -> None:
    """The property: only statevault errors, and verify OK exactly when load succeeds."""
    loaded = outcome(lambda: statevault.load(path))
    outcome(lambda: statevault.Checkpoint(path).close())
    outcome(lambda: statevault.inspect(path))
    report: list[Any] = []
    verified = outcome(lambda: report.append(statevault.verify(path)))
    ok = verified is None and report[0].ok
    assert ok is (loaded is None), (loaded, verified, report)


# -- structure-aware hostile headers -------------------------------------------------------

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6)
)
JUNK = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
NAMES = st.text(max_size=8) | st.sampled_from(
    ["__metadata__", "dtype", "shape", "data_offsets", "a", "ä.β.0", "\u00b2", "x" * 200]
)
BIG = st.sampled_from([2**31, 2**32 - 1, 2**62, 2**63 - 1, 2**63, 2**64, 2**64 + 8, -1, -(2**63)])
DIMS = st.integers(0, 4) | BIG | st.booleans() | st.just(2.0) | st.none()
HOSTILE_FIELDS = {
    "dtype": st.sampled_from([*sorted(CODE_ITEMSIZE), "F5", "", "f32", "F32 "]) | JUNK,
    "shape": st.lists(DIMS, max_size=5) | JUNK,
    "data_offsets": st.lists(st.integers(0, 40) | BIG, max_size=3) | JUNK,
}


@st.composite
def hostile_headers(draw: st.DrawFn) -> bytes:
    """A safetensors file: a header of mostly well-formed tensors, some fields hostile."""
    members: list[tuple[str, str]] = []
    offset = 0
    for name in draw(st.lists(NAMES, max_size=6)):
        code = draw(st.sampled_from(sorted(CODE_ITEMSIZE)))
        shape = draw(st.lists(st.integers(0, 3), max_size=3))
        nbytes = math.prod(shape) * CODE_ITEMSIZE[code]
        fields: dict[str, Any] = {
            "dtype": code,
            "shape": shape,
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
        change = draw(st.sampled_from(["none", "none", "field", "drop", "extra", "shift", "huge"]))
        if change == "field":
            key = draw(st.sampled_from(sorted(HOSTILE_FIELDS)))
            fields[key] = draw(HOSTILE_FIELDS[key])
        elif change == "drop":
            del fields[draw(st.sampled_from(sorted(fields)))]
        elif change == "extra":
            fields[draw(st.text(max_size=5))] = draw(JUNK)
        elif change == "shift":  # a gap or an overlap
            delta = draw(st.integers(-4, 4))
            fields["data_offsets"] = [
                max(0, fields["data_offsets"][0] + delta),
                fields["data_offsets"][1] + delta,
            ]
        elif change == "huge":  # up to 2**63 - 1 elements, offsets far past any file
            fields["dtype"], fields["shape"] = (
                "U8",
                draw(st.sampled_from([[2**62, 2], [2**63 - 1], [0, 2**63 - 1], [2**31] * 3])),
            )
            fields["data_offsets"] = [offset - nbytes, offset - nbytes + math.prod(fields["shape"])]
        order = draw(st.permutations(sorted(fields)))
        ascii_only = draw(st.booleans())
        body = ",".join(
            f"{json.dumps(k, ensure_ascii=ascii_only)}:{json.dumps(fields[k])}" for k in order
        )
        members.append((name, "{" + body + "}"))
    metadata = draw(
        st.none() | st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=3) | JUNK
    )
    if metadata is not None:
        members.insert(draw(st.integers(0, len(members))), ("__metadata__", json.dumps(metadata)))
    if members and draw(st.booleans()):  # a duplicate key
        members.append(members[draw(st.integers(0, len(members) - 1))])
    text = "{" + ",".join(f"{json.dumps(k, ensure_ascii=False)}:{v}" for k, v in members) + "}"
    if draw(st.integers(0, 9)) == 0:  # not an object at all, or an object nested in one
        text = draw(st.sampled_from([f"[{text}]", f'{{"x":{text}}}', json.dumps(draw(JUNK))]))
    body = text.encode()
    body += b" " * draw(st.sampled_from([-len(body) % 8, 0, 1]))
    data = bytes(max(0, offset + draw(st.sampled_from([0, 0, 0, -1, 1, 8]))))
    return struct.pack("<Q", len(body)) + body + data


def safetensors(header: str) -> bytes:
    body = header.encode() + b" " * (-len(header.encode()) % 8)
    return struct.pack("<Q", len(body)) + body


REGRESSIONS = [  # inputs this parser once judged wrongly
    safetensors('{"shape":{}}'),  # a tensor named like a field: refused with a raw message
    safetensors('{"__metadata__":{"dtype":""}}'),  # metadata key named like a field: refused
]


def test_hostile_headers(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    path = tmp_path / "fuzz.safetensors"

    @fuzz_settings(request)
    @given(content=hostile_headers())
    def run(content: bytes) -> None:
        path.write_bytes(content)
        check_readers(path)

    for content in REGRESSIONS:
        run = example(content=content)(run)
    run()


# -- format 2: hostile trees and aliases ---------------------------------------------------

TENSOR_NAMES = st.sampled_from(["a", "c", "b", "zz"])
KEYS = st.text(max_size=3) | st.integers(-2, 2) | st.booleans() | st.none() | st.just(1.5)
LEAVES = (
    SCALARS
    | st.builds(lambda n: {"tensor": n}, TENSOR_NAMES | JUNK)
    | st.builds(lambda f: {"float": f}, st.sampled_from(["nan", "inf", "-inf", "NaN"]) | JUNK)
)
TREES = st.recursive(
    LEAVES,
    lambda inner: (
        st.builds(lambda items: {"list": items}, st.lists(inner, max_size=3))
        | st.builds(lambda items: {"tuple": items}, st.lists(inner, max_size=3))
        | st.builds(
            lambda pairs: {"dict": pairs},
            st.lists(st.tuples(KEYS, inner).map(list) | JUNK, max_size=3),
        )
        | st.builds(
            lambda body, versions: {"dict": body, "torch_metadata": versions}, st.just([]), JUNK
        )
        | st.dictionaries(st.sampled_from(["list", "dict", "tensor", "x"]), inner, max_size=2)
    ),
    max_leaves=10,
)


def test_hostile_trees_and_aliases(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    path = tmp_path / "fuzz.safetensors"

    @fuzz_settings(request)
    @given(
        tree=TREES,
        aliases=st.dictionaries(TENSOR_NAMES, TENSOR_NAMES, max_size=2),
        dtypes=st.dictionaries(
            TENSOR_NAMES, st.sampled_from(["float32", "int64", "bogus"]), max_size=1
        ),
    )
    @example(tree={"dict": [[True, 1]]}, aliases={}, dtypes={})
    @example(tree={"list": [{"tensor": "b"}]}, aliases={"b": "a"}, dtypes={})
    @example(tree={"dict": [], "torch_metadata": 5}, aliases={}, dtypes={})
    @example(tree={"list": [None, {"list": []}]}, aliases={}, dtypes={})  # inspect: KeyError
    @example(tree={"list": [None, {"list": [{"tensor": "a"}]}]}, aliases={}, dtypes={})
    def run(tree: Any, aliases: dict[str, str], dtypes: dict[str, str]) -> None:
        path.write_bytes(format2_bytes(json.dumps(tree), aliases=aliases, dtypes=dtypes))
        check_readers(path)

    run()


# -- a seeded byte mutator over real files ---------------------------------------------------


def golden_files(tmp_path: Path) -> list[bytes]:
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(3, 4, generator=generator)
    state = {
        "model": {"w": weight, "tied": weight, "b": torch.zeros(4, dtype=torch.bfloat16)},
        "optim": {"state": {0: {"step": 3}}, "param_groups": [{"lr": 0.1, "betas": (0.9, 0.99)}]},
        "loss": float("nan"),
    }
    statevault.save(state, tmp_path / "format2.safetensors", metadata={"run": "fuzz"})
    return [
        (DATA / "format1.safetensors").read_bytes(),
        (DATA / "format1_user_keys.safetensors").read_bytes(),
        (tmp_path / "format2.safetensors").read_bytes(),
    ]


def mutate(original: bytes, seed: int) -> bytes:
    """A few random edits, most of them inside the 8-byte prefix and the header."""
    rnd = random.Random(seed)
    data = bytearray(original)
    header_end = 8 + int.from_bytes(original[:8], "little")
    for _ in range(rnd.randint(1, 4)):
        at = rnd.randrange(header_end) if rnd.random() < 0.8 else rnd.randrange(len(data) or 1)
        edit = rnd.choice(["flip", "byte", "cut", "insert", "delete", "copy", "prefix", "json"])
        if edit == "flip" and at < len(data):
            data[at] ^= 1 << rnd.randrange(8)
        elif edit == "byte" and at < len(data):
            data[at] = rnd.randrange(256)
        elif edit == "cut":
            del data[at:]
        elif edit == "insert":
            data[at:at] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 8)))
        elif edit == "delete":
            del data[at : at + rnd.randint(1, 16)]
        elif edit == "copy":
            start = rnd.randrange(len(data) or 1)
            data[at:at] = data[start : start + rnd.randint(1, 64)]
        elif edit == "prefix":
            data[:8] = struct.pack(
                "<Q", rnd.choice([0, 1, 2, header_end - 8 + rnd.randint(-9, 9), 2**63, 2**64 - 1])
            )
        elif edit == "json":  # a JSON token where another one was
            token = rnd.choice(
                [b"{", b"}", b"[", b"]", b'"', b",", b":", b"1e999", b"-1", b"null", b"\\"]
            )
            data[at : at + 1] = token
    return bytes(data)


def test_mutated_golden_files(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    golden = golden_files(tmp_path)
    path = tmp_path / "fuzz.safetensors"

    @fuzz_settings(request)
    @given(which=st.integers(0, len(golden) - 1), seed=st.integers(0, 2**32 - 1))
    def run(which: int, seed: int) -> None:
        path.write_bytes(mutate(golden[which], seed))
        check_readers(path)

    run()


# -- sharded indexes -----------------------------------------------------------------------


def test_hostile_indexes(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    directory = tmp_path / "sharded"
    directory.mkdir()
    statevault.save({"w": torch.ones(2)}, directory / "model-1.safetensors")
    statevault.save({"v": torch.ones(1)}, directory / "model-2.safetensors")
    index = directory / "model.safetensors.index.json"
    shard_names = (
        st.sampled_from(["model-1.safetensors", "model-2.safetensors", "../x", "", "/etc/passwd"])
        | JUNK
    )

    @fuzz_settings(request)
    @given(
        weight_map=st.dictionaries(
            st.sampled_from(["w", "v", "u"]) | st.text(max_size=3), shard_names, max_size=3
        )
        | JUNK,
        metadata=JUNK,
        wrap=st.sampled_from(["plain", "nested", "deep", "bytes"]),
    )
    def run(weight_map: Any, metadata: Any, wrap: str) -> None:
        document: Any = {"metadata": metadata, "weight_map": weight_map}
        text = json.dumps(document)
        if wrap == "nested":
            text = json.dumps([document])
        elif wrap == "deep":
            text = '{"weight_map":' * 5000 + "{}" + "}" * 5000
        index.write_bytes(text.encode() if wrap != "bytes" else text.encode()[:-3] + b"\xff\xfe")
        outcome(lambda: statevault.inspect(directory))
        outcome(lambda: statevault.verify(directory))

    run()
