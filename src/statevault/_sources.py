"""Where load_into takes tensors from: a checkpoint file or an in-memory state dict.

Both answer the same three questions: which names exist, what shape/dtype each has (without
reading data), and "fill these destination tensors", so load_into has one code path.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from statevault._checkpoint import Checkpoint
from statevault._tree import Skeleton, unflatten
from statevault.errors import HeaderError, UnsupportedObjectError

EXTRA_STATE = "_extra_state"  # torch's state_dict key for get_extra_state()

Source = str | os.PathLike[str] | Mapping[str, torch.Tensor] | Checkpoint


class FileSource:
    """A checkpoint file; reads go straight into destination memory when they can."""

    def __init__(self, checkpoint: Checkpoint, *, owned: bool) -> None:
        self.checkpoint = checkpoint
        self.label = str(checkpoint.path)
        self.aliases: Mapping[str, str] = checkpoint.aliases
        self._owned = owned
        self._objects: dict[str, Skeleton] | None = None  # see stored_object

    def close(self) -> None:
        if self._owned:
            self.checkpoint.close()

    def names(self) -> list[str]:
        return self.checkpoint.keys()

    def signature(self, name: str) -> tuple[tuple[int, ...], torch.dtype]:
        # not resolve(): it builds a TensorInfo, and this runs once per model key
        return self.checkpoint.signature(name)

    def fill(
        self,
        pairs: Iterable[tuple[str, torch.Tensor]],
        *,
        verify: bool,
        dtypes_match: bool = False,
    ) -> None:
        """Copy each named tensor into its destination (which has the same shape).

        ``dtypes_match``: the caller has checked that every destination has its tensor's
        stored dtype, so that is not looked up again per tensor (~10 ms for 20,000).
        """
        staged: list[tuple[str, torch.Tensor]] = []
        signature = self.checkpoint.signature

        def direct() -> Iterator[tuple[str, torch.Tensor]]:
            # a generator, not a list: one tuple per tensor is 1 MiB for 20,000 tensors
            for name, dest in pairs:
                stored = self.aliases.get(name, name)
                if (
                    # dest.device.type in DIRECT_DEVICES, without building a torch.device
                    # and asking its type (240 -> 40 ns, for each of 20,000 tensors)
                    (dest.is_cpu or dest.is_cuda)
                    and dest.is_contiguous()
                    and (dtypes_match or dest.dtype == signature(stored)[1])
                ):
                    yield stored, dest
                else:
                    staged.append((stored, dest))

        self.checkpoint.read_into(direct(), verify=verify)
        if staged:
            # Other dtype or device: read into a temporary, then copy (and cast) across.
            fresh = self.checkpoint.read({n for n, _ in staged}, verify=verify)
            with torch.no_grad():
                for name, dest in staged:
                    dest.copy_(fresh[name])

    def tensors(self, names: Sequence[str], *, verify: bool) -> dict[str, torch.Tensor]:
        return self.checkpoint.read(names, verify=verify)

    def stored_object(self, key: str) -> tuple[bool, Any]:
        """``(True, value)`` when the saved state dict has a non-tensor value at ``key``.

        That is a module's extra state (``get_extra_state``), kept in the nested-state tree.
        The tree is looked at once per load, however many modules have extra state.
        """
        if self._objects is None:
            self._objects = self._top_level_objects()
        node = self._objects.get(key)
        if node is None:
            return False, None
        try:
            return True, unflatten(node, lambda name: self.checkpoint.read([name])[name])
        except HeaderError as exc:
            raise HeaderError(f"{self.checkpoint.path}: {exc}") from None

    def _top_level_objects(self) -> dict[str, Skeleton]:
        """The tree nodes of the saved state dict's values that are not lone tensors.

        A file opened only to read tensors by name dropped its tree, so it is opened again:
        a header parse paid only by models that have extra state.
        """
        if self.checkpoint.vault.has_tree:
            tree = self.checkpoint.tree
        elif self._owned:
            with Checkpoint(self.checkpoint.path) as again:
                tree = again.tree
        else:  # a Checkpoint the caller opened, with no tree: nothing but tensors was saved
            return {}
        pairs = tree.get("dict") if isinstance(tree, dict) else None
        return {
            pair[0]: pair[1]
            for pair in (pairs if isinstance(pairs, list) else ())
            if isinstance(pair, list)
            and len(pair) == 2
            and isinstance(pair[0], str)
            and not (isinstance(pair[1], dict) and "tensor" in pair[1])
        }


def _is_extra_state(key: object) -> bool:
    return isinstance(key, str) and key.rpartition(".")[2] == EXTRA_STATE


class MemorySource:
    """A state dict already in memory (e.g. what ``torch.load`` returned)."""

    def __init__(self, state: Mapping[str, Any]) -> None:
        bad = [
            k
            for k, v in state.items()
            if not isinstance(k, str) or not (isinstance(v, torch.Tensor) or _is_extra_state(k))
        ]
        if bad:
            raise UnsupportedObjectError(
                f"state dict entry {bad[0]!r} is not a str -> tensor pair; load_into takes a flat "
                "state dict (use statevault.load(path)['model'] for nested checkpoints)"
            )
        self.state = state
        self.label = "<in-memory state dict>"
        self.aliases: Mapping[str, str] = {}

    def close(self) -> None:
        pass

    def names(self) -> list[str]:
        return [k for k, v in self.state.items() if isinstance(v, torch.Tensor)]

    def stored_object(self, key: str) -> tuple[bool, Any]:
        value = self.state.get(key)
        return (key in self.state and not isinstance(value, torch.Tensor)), value

    def signature(self, name: str) -> tuple[tuple[int, ...], torch.dtype]:
        tensor = self.state[name]
        return tuple(tensor.shape), tensor.dtype

    def fill(
        self,
        pairs: Iterable[tuple[str, torch.Tensor]],
        *,
        verify: bool,
        dtypes_match: bool = False,
    ) -> None:
        with torch.no_grad():
            for name, dest in pairs:
                dest.copy_(self.state[name])

    def tensors(self, names: Sequence[str], *, verify: bool) -> dict[str, torch.Tensor]:
        return {n: self.state[n] for n in names}


def _open_by_name(path: Path) -> Checkpoint:
    """A checkpoint to read tensors from by name, without its nested-state tree.

    ``load_into`` never uses the tree, and for 20,000 tensors its parsed form is about
    10 MiB of Python objects that would otherwise stay alive through the whole load.
    """
    checkpoint = Checkpoint(path)
    checkpoint.vault = replace(checkpoint.vault, tree=None, tree_text=None, has_tree=False)
    return checkpoint


def open_source(source: Source) -> FileSource | MemorySource:
    if isinstance(source, Checkpoint):
        return FileSource(source, owned=False)
    if isinstance(source, (str, os.PathLike)):
        return FileSource(_open_by_name(Path(source)), owned=True)
    if isinstance(source, Mapping):
        return MemorySource(source)
    raise UnsupportedObjectError(
        f"load_into source must be a path, a Checkpoint or a state dict, got {type(source)!r}"
    )
