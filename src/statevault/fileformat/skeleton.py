"""The skeleton's grammar: one decoder of a node and one walk over a tree of them.

The skeleton (see ``tree``'s docstring for its nodes) is read in several places: ``unflatten``
builds the saved object from it, readers find torch's version tables and top-level objects in
it, tools print its plain values, a folder renames its tensors. Each of them reads a node with
:func:`read_node` and visits a tree with :func:`walk` (or recurses with ``read_node`` when it
builds something bottom-up), so the node grammar and what counts as damage live only here:
whatever :func:`read_node` refuses, ``load`` refuses too.

Pure, no I/O. May import: ``fileformat.table`` (``brief``). Imported by: ``tree`` and the readers
and tools that read a skeleton (version tables, top-level objects, plain values, renaming).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

from statevault.fileformat.table import brief

Skeleton = Any  # a JSON value as described in ``tree``'s module docstring
Path = tuple[str | int, ...]  # dict keys and list/tuple positions from the root

# Containers nested deeper than this are refused on save and on load: real training state
# is a handful of levels deep, and a bound keeps every walk of a hostile tree (ours, JSON's)
# far from Python's recursion limit.
MAX_DEPTH = 100

TENSOR, FLOAT, VALUE = "tensor", "float", "value"
DICT, LIST, TUPLE = "dict", "list", "tuple"
CONTAINERS = frozenset({DICT, LIST, TUPLE})
_KINDS = frozenset({TENSOR, FLOAT, DICT, LIST, TUPLE})
_FLOATS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_DICT_WITH_VERSIONS = {DICT, "torch_metadata"}
_TYPED_TENSOR = {TENSOR, "type"}  # a numpy value stored as a tensor


class BadNode(Exception):
    """A damaged skeleton node; ``path`` collects its location (innermost first)."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.path: list[str | int] = []


# One decoded node: ``(kind, value, body, tensor_type, versions)``. A plain tuple, not a
# NamedTuple or dataclass: a load decodes one per tensor, and building those costs ~8x more.
#   kind         VALUE, FLOAT, TENSOR, DICT, LIST or TUPLE
#   value        VALUE: the JSON literal; FLOAT: the float; TENSOR: the tensor's name
#   body         a container's children: DICT's ``[key, child]`` pairs (checked: str or int
#                keys, none repeated), LIST's and TUPLE's children; None for the others
#   tensor_type  a numpy value's ``"numpy.ndarray:uint32"`` on a TENSOR, else None
#   versions     a DICT's torch version table (``torch_metadata``), else None
Node = tuple[str, Any, list[Any] | None, str | None, dict[str, Any] | None]


def read_node(node: Skeleton) -> Node:
    """Decode one node; raise :class:`BadNode` for anything ``save`` never writes."""
    if type(node) is not dict:
        if node is None or isinstance(node, (bool, int, float, str)):
            return (VALUE, node, None, None, None)
        raise BadNode(f"unexpected node {brief(node)}")
    if len(node) != 1 and node.keys() != _DICT_WITH_VERSIONS and node.keys() != _TYPED_TENSOR:
        raise BadNode(f"unexpected node {brief(node)}")
    kind, body = next(iter(node.items()))
    if kind == TENSOR and type(body) is str:
        if len(node) == 1:  # the common case: a plain tensor
            return (TENSOR, body, None, None, None)
        typed = node["type"]
        if type(typed) is not str:
            raise BadNode(f"unexpected node {brief(node)}")
        return (TENSOR, body, None, typed, None)
    if kind == FLOAT and type(body) is str and body in _FLOATS:
        return (FLOAT, _FLOATS[body], None, None, None)
    if kind not in CONTAINERS or type(body) is not list:
        raise BadNode(f"unknown node kind {brief(kind)} or malformed body {brief(body)}")
    if kind != DICT:
        return (kind, None, body, None, None)
    for pair in body:
        if not (
            type(pair) is list and len(pair) == 2 and (type(pair[0]) is str or type(pair[0]) is int)
        ):
            raise BadNode(f"bad or repeated dict entry {brief(pair)}")
    if len({pair[0] for pair in body}) != len(body):
        raise BadNode(f"bad or repeated dict entry {brief(_first_repeat(body))}")
    return (DICT, None, body, None, None if len(node) == 1 else _versions(node))


def _first_repeat(pairs: list[list[Any]]) -> list[Any]:
    seen: set[Any] = set()
    for pair in pairs:
        if pair[0] in seen:
            return pair
        seen.add(pair[0])
    raise AssertionError("no repeated key")


def children(node: Node) -> Iterator[tuple[str | int, Skeleton]]:
    """A decoded container's (key or index, child) in saved order; nothing for a leaf."""
    kind, _, body, _, _ = node
    if body is None:
        return iter(())
    if kind == DICT:
        return ((pair[0], pair[1]) for pair in body)
    return enumerate(body)


def _versions(node: dict[str, Any]) -> dict[str, Any]:
    versions = node["torch_metadata"]
    if not (
        type(versions) is dict
        and all(
            type(entry) is dict and all(isinstance(v, (int, str)) for v in entry.values())
            for entry in versions.values()
        )
    ):
        raise BadNode(f"bad torch_metadata {brief(versions)}")
    return versions


def walk(
    skeleton: Skeleton, *, into: Callable[[Node], bool] | None = None
) -> Iterator[tuple[Path, Node]]:
    """Every node of ``skeleton`` with its path, parents before children, in saved order.

    ``into(node)`` says whether to visit a container's children (all, by default). Iterative
    and bounded by ``MAX_DEPTH``; a damaged node raises :class:`BadNode` with its path.
    """
    stack: list[tuple[Path, Skeleton]] = [((), skeleton)]
    while stack:
        path, raw = stack.pop()
        try:
            node = read_node(raw)
        except BadNode as bad:
            bad.path.extend(reversed(path))
            raise
        yield path, node
        kind, _, body, _, _ = node
        if body is None or (into is not None and not into(node)):
            continue
        if len(path) >= MAX_DEPTH:
            too_deep = BadNode(f"containers are nested more than {MAX_DEPTH} deep")
            too_deep.path.extend(reversed(path))
            raise too_deep
        if kind == DICT:  # children pushed last first, so they pop in saved order
            stack.extend([((*path, pair[0]), pair[1]) for pair in reversed(body)])
        else:
            stack.extend([((*path, i), body[i]) for i in range(len(body) - 1, -1, -1)])


def path_text(path: Path) -> str:
    """A node's path as statevault names it (``optim.state.0``; ``<root>`` for the root)."""
    # backslashreplace: a name with a lone surrogate cannot even be printed as it is
    text = ".".join(str(part) for part in path) or "<root>"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def with_tensor_prefix(skeleton: Skeleton, prefix: str) -> Skeleton:
    """A new skeleton whose tensor nodes refer to ``prefix + name`` (``skeleton`` is kept)."""
    kind, name, body, _, _ = node = read_node(skeleton)
    if kind == TENSOR:
        return {**skeleton, TENSOR: prefix + name}
    if body is None:
        return skeleton
    if kind == DICT:
        return {**skeleton, DICT: [[k, with_tensor_prefix(v, prefix)] for k, v in children(node)]}
    return {kind: [with_tensor_prefix(v, prefix) for v in body]}
