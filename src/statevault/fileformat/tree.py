"""Nested training state <-> (JSON skeleton, flat name->tensor table).

A training checkpoint is a tree: dicts with string *and* int keys (optimizer state is keyed
by parameter index), lists, tuples, tensors and plain scalars. safetensors stores only a flat
table of tensors, so we split the tree into that table plus a JSON skeleton that records the
structure. Skeleton nodes are either JSON literals (str, int, float, bool, null) or a
one-key object naming the node kind::

    {"tensor": "optimizer.state.0.exp_avg"}
    {"dict": [["lr", 0.001], [0, {...}]]}         # pairs keep int keys and order
    {"list": [...]}   {"tuple": [...]}   {"float": "nan" | "inf" | "-inf"}
    {"tensor": "rng.numpy.1", "type": "numpy.ndarray:uint32"}   # a numpy array
    {"tensor": "rng.gauss", "type": "numpy.scalar:float64"}     # a numpy scalar (0-d tensor)

numpy values are stored as tensors (shared memory, no copy when the array is contiguous and
writable) and their numpy dtype is recorded, so they come back as numpy arrays / scalars of
that dtype. ``"tensor"`` stays the first key in sorted order, so a reader that does not know
``"type"`` still finds a plain tensor.

A dict that came from ``state_dict()`` also keeps torch's per-module version table under
``"torch_metadata"`` so modules that migrate old checkpoints (BatchNorm) see what they expect.
Reading nodes back is ``skeleton``'s job (the one node decoder and walk); this module builds.

May import: ``statevault.errors``, ``fileformat.skeleton``, ``fileformat.table`` (and torch,
numpy when the state holds numpy values). Imported by: saving (``flatten``), readers and tools
(``unflatten``, ``check_tree``, ``numpy_names``).
"""

from __future__ import annotations

import math
import sys
from collections import OrderedDict
from collections.abc import Callable, Container
from typing import Any

import torch

from statevault.errors import HeaderError, UnsupportedObjectError
from statevault.fileformat.skeleton import (
    DICT,
    MAX_DEPTH,
    TENSOR,
    BadNode,
    path_text,
    read_node,
    walk,
)
from statevault.fileformat.skeleton import Skeleton as Skeleton  # re-exported for the codec's users
from statevault.fileformat.table import brief

ROOT_TENSOR_NAME = "tensor"
NUMPY_ARRAY = "numpy.ndarray"
NUMPY_SCALAR = "numpy.scalar"
# numpy dtypes with a torch dtype of the same bits (torch.from_numpy takes each of them);
# object, str, bytes, void, datetime and longdouble have none and are refused
NUMPY_DTYPES = frozenset(
    {"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"}
    | {"float16", "float32", "float64", "complex64", "complex128"}
)


def check_text(text: str, where: str, what: str) -> None:
    """Refuse a string the header cannot hold: UTF-8 has no lone surrogates (``"\\udc80"``,
    what ``os.fsdecode`` makes of undecodable bytes). isascii() is a flag lookup, so
    common names cost nothing. ``where`` says which value it is, ``what`` what kind."""
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise UnsupportedObjectError(
            f"{where}: {what} {text!a} contains a lone surrogate, which UTF-8 (and so "
            "the file's JSON header) cannot hold; rename it, e.g. with "
            "name.encode('utf-8', 'replace').decode('utf-8')"
        ) from None


class _Flattener:
    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}

    def name_for(self, path: tuple[str | int, ...]) -> str:
        base = ".".join(map(str, path)) or ROOT_TENSOR_NAME
        name, suffix = base, 2
        while name in self.tensors:  # e.g. {"a.b": x, "a": {"b": y}} flatten to the same name
            name, suffix = f"{base}#{suffix}", suffix + 1
        return name

    def visit(self, value: Any, path: tuple[str | int, ...]) -> Skeleton:
        if isinstance(value, torch.Tensor):
            name = self.name_for(path)
            self.tensors[name] = value
            return {"tensor": name}
        if isinstance(value, str):
            if not value.isascii():  # the path text is built only when it may be needed
                check_text(value, path_text(path), "string")
            return value
        if value is None or isinstance(value, bool):
            return value
        if type(value) is int:
            return value
        if type(value) is float:
            if math.isfinite(value):
                return value
            return {"float": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
        if len(path) >= MAX_DEPTH and type(value) in (dict, OrderedDict, list, tuple, torch.Size):
            raise UnsupportedObjectError(
                f"{path_text(path)}: state is nested too deeply (over {MAX_DEPTH} containers), "
                "more than statevault stores; flatten that part, or check it for a container "
                "that contains itself"
            )
        if type(value) in (dict, OrderedDict):
            return self.visit_dict(value, path)
        if type(value) is list:
            return {"list": [self.visit(item, (*path, i)) for i, item in enumerate(value)]}
        if type(value) in (tuple, torch.Size):
            return {"tuple": [self.visit(item, (*path, i)) for i, item in enumerate(value)]}
        numpy = sys.modules.get("numpy")  # a numpy value implies numpy is imported already
        if numpy is not None and (type(value) is numpy.ndarray or isinstance(value, numpy.generic)):
            name = self.name_for(path)
            self.tensors[name], dtype_name = _numpy_tensor(value, path)
            kind = NUMPY_ARRAY if type(value) is numpy.ndarray else NUMPY_SCALAR
            return {"tensor": name, "type": f"{kind}:{dtype_name}"}
        if isinstance(value, torch.nn.Module):
            raise UnsupportedObjectError(
                f"{path_text(path)}: cannot store {type(value)!r} (an nn.Module) inside other "
                "state; store its weights instead: module.state_dict()"
            )
        raise UnsupportedObjectError(
            f"{path_text(path)}: cannot store {type(value)!r} without pickle. statevault stores "
            "tensors, dicts (str/int keys), lists, tuples, int, float, bool, str and None; "
            "convert this value to one of those (e.g. dict(x), x.tolist(), float(x))"
        )

    def visit_dict(self, value: dict[Any, Any], path: tuple[str | int, ...]) -> Skeleton:
        pairs = []
        for key, item in value.items():
            if not (isinstance(key, str) or type(key) is int):
                raise UnsupportedObjectError(
                    f"{path_text((*path, str(key)))}: dict key {key!r} of {type(key)!r} is not "
                    "supported; keys must be str or int"
                )
            if isinstance(key, str) and not key.isascii():
                check_text(key, path_text((*path, key)), "key")
            pairs.append([key, self.visit(item, (*path, key))])
        node: dict[str, Any] = {"dict": pairs}
        versions = getattr(value, "_metadata", None)
        if isinstance(versions, dict):  # nested ones too, e.g. {"model": model.state_dict()}
            node["torch_metadata"] = _json_versions(versions)
        return node


def _numpy_tensor(value: Any, path: tuple[str | int, ...]) -> tuple[torch.Tensor, str]:
    """A numpy array or scalar as a tensor with the same bits, and its numpy dtype's name.

    The tensor shares the array's memory when it can; a non-contiguous, read-only or
    byte-swapped array is copied first (torch cannot wrap those), never modified.
    """
    import numpy  # already imported: flatten only calls this for numpy values

    array = numpy.asarray(value)
    name = array.dtype.name
    if name not in NUMPY_DTYPES:
        raise UnsupportedObjectError(
            f"{path_text(path)}: cannot store a numpy {type(value).__name__} of dtype "
            f"{array.dtype.str!r} ({name}) without pickle; statevault stores numpy values of "
            f"dtype {', '.join(sorted(NUMPY_DTYPES))}. Convert it (e.g. x.tolist(), "
            "x.astype(numpy.float64))"
        )
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))  # same values, native bytes
    if not (array.flags.c_contiguous and array.flags.writeable):
        array = numpy.array(array, order="C", copy=True)
    return torch.from_numpy(array), name


def _numpy_value(tensor: torch.Tensor | None, kind: str) -> Any:
    """The numpy array (or scalar) a ``{"tensor", "type": "numpy...."}`` node was saved from.

    ``tensor`` is None when the tree is only being checked (:func:`check_tree`).
    """
    what, _, dtype_name = kind.partition(":")
    if what not in (NUMPY_ARRAY, NUMPY_SCALAR) or dtype_name not in NUMPY_DTYPES:
        raise BadNode(f"unknown tensor type {brief(kind)}")
    if tensor is None:
        return None
    try:
        array = tensor.detach().cpu().numpy()
    except RuntimeError as exc:  # torch raises this when numpy is not installed
        raise UnsupportedObjectError(
            f"this checkpoint holds a numpy value ({kind}); loading it needs numpy ({exc})"
        ) from None
    if array.dtype.name != dtype_name:
        raise BadNode(f"numpy {dtype_name} value stored as a {tensor.dtype} tensor")
    if what == NUMPY_SCALAR:
        if array.ndim != 0:
            raise BadNode(f"numpy scalar stored with shape {list(array.shape)}")
        return array[()]
    return array


def numpy_names(skeleton: Skeleton) -> set[str]:
    """Names of the tensors that hold numpy values (they keep their numpy dtype on casts)."""
    return {node[1] for _, node in walk(skeleton) if node[3] is not None}


def _json_versions(versions: dict[Any, Any]) -> dict[str, Any]:
    """torch's state_dict version table, kept only where it is plain JSON."""
    return {
        str(prefix): {k: v for k, v in entry.items() if isinstance(v, (int, str, bool))}
        for prefix, entry in versions.items()
        if isinstance(entry, dict)
    }


def flatten(obj: Any) -> tuple[Skeleton, dict[str, torch.Tensor]]:
    """Split ``obj`` into a JSON skeleton and a name->tensor table (names unique).

    ``nn.Module`` arguments are replaced by their ``state_dict()``. Nothing is mutated; the
    table holds the caller's own tensor objects, and numpy values as tensors sharing their
    memory (copied only when torch cannot wrap them: see ``_numpy_tensor``).
    """
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    flattener = _Flattener()
    try:
        skeleton = flattener.visit(obj, ())
    except RecursionError:
        raise UnsupportedObjectError(
            "state is nested too deeply to store (Python's recursion limit was reached); "
            "flatten it, or check it for a container that contains itself"
        ) from None
    return skeleton, flattener.tensors


def _build(raw: Skeleton, tensor: Callable[[str], Any], depth: int) -> Any:
    """One node of :func:`unflatten`; raises :class:`BadNode` for anything save never writes."""
    kind, value, body, tensor_type, versions = read_node(raw)
    if kind == TENSOR:
        try:
            found = tensor(value)
        except KeyError:
            raise BadNode(
                f"refers to unknown tensor {value!r}, which the file does not hold"
            ) from None
        return found if tensor_type is None else _numpy_value(found, tensor_type)
    if body is None:  # a JSON literal, or a non-finite float
        return value
    if depth >= MAX_DEPTH:
        raise BadNode(f"containers are nested more than {MAX_DEPTH} deep")
    if kind != DICT:
        items = []
        for i, item in enumerate(body):
            try:
                items.append(_build(item, tensor, depth + 1))
            except BadNode as bad:
                bad.path.append(i)
                raise
        return items if kind == "list" else tuple(items)
    result: dict[Any, Any] = {}
    for key, item in body:
        try:
            result[key] = _build(item, tensor, depth + 1)
        except BadNode as bad:
            bad.path.append(key)
            raise
    if versions is None:
        return result
    ordered: OrderedDict[Any, Any] = OrderedDict(result)
    ordered._metadata = versions  # type: ignore[attr-defined]
    return ordered


def unflatten(skeleton: Skeleton, tensor: Callable[[str], Any]) -> Any:
    """Rebuild the saved object, fetching each tensor by name through ``tensor``.

    ``tensor`` raises KeyError for a name the file does not hold. This is also the one
    check of a skeleton (:func:`check_tree`), so whatever it refuses, load refuses too:
    a HeaderError naming the node's path. Recursion is bounded by ``MAX_DEPTH``.
    """
    try:
        return _build(skeleton, tensor, 0)
    except BadNode as bad:
        where = path_text(tuple(reversed(bad.path)))
        raise HeaderError(
            f"statevault tree in header is damaged at node {where}: {bad.problem}"
        ) from None


def check_tree(skeleton: Skeleton, known: Container[str]) -> None:
    """Raise what :func:`unflatten` would for ``skeleton`` when the file holds ``known``."""

    def fetch(name: str) -> None:
        if name not in known:
            raise KeyError(name)

    unflatten(skeleton, fetch)
