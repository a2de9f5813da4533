"""Hugging Face's sharded layout, pure: shard sizes, shard names, the index document.

``model.safetensors`` split in N becomes ``model-00001-of-0000N.safetensors`` ... plus
``model.safetensors.index.json`` = ``{"metadata": {"total_size": N, ...}, "weight_map":
{name: shard}}``, exactly as ``transformers``' ``save_pretrained`` and ``huggingface_hub``'s
splitter write it. Sizes follow ``huggingface_hub``: decimal units ("5GB" is 5 * 10**9
bytes), tensors placed greedily in key order, one larger than the limit alone in a shard,
tensors sharing storage in the shard of the first. Tied names follow its convention too:
one name stored, ``removed -> kept`` in the index's ``metadata``.

statevault adds one ``metadata`` key other readers ignore, ``"statevault"``: JSON text
holding each shard's header digest (what binds the set: a stale, swapped or missing shard
is named) and, for nested training state, the skeleton ``load`` rebuilds it from.

May import: ``statevault.errors`` and the other ``fileformat`` modules. Imported by:
saving (planning and writing) and readers (the binding check).
"""

from __future__ import annotations

import json
import re
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from statevault.errors import HeaderError, InvalidArgumentError
from statevault.fileformat.checksums import canonical_json

SIZE_UNITS = {"TB": 10**12, "GB": 10**9, "MB": 10**6, "KB": 10**3}
INDEX_SUFFIX = ".index.json"
BINDING_KEY = "statevault"
BINDING_VERSION = 1
TOTAL_SIZE_KEY = "total_size"


def parse_size(value: int | str) -> int:
    """``max_shard_size`` in bytes: an int, or "5GB" / "500MB" / "10KB" (decimal units)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidArgumentError(
            f"max_shard_size must be a byte count or a size such as '5GB', got {value!r}"
        )
    if isinstance(value, str):
        text = value.strip()
        unit = text[-2:].upper()
        number = text[:-2].strip()
        if unit not in SIZE_UNITS or not re.fullmatch(r"[0-9]+(\.[0-9]+)?", number):
            raise InvalidArgumentError(
                f"max_shard_size={value!r}: give bytes as an int or a number with a unit "
                "of KB, MB, GB or TB (decimal, as huggingface_hub), e.g. '5GB'"
            )
        value = int(float(number) * SIZE_UNITS[unit])
    if value <= 0:
        raise InvalidArgumentError(f"max_shard_size must be positive, got {value!r}")
    return value


def plan_shards(
    sizes: Sequence[int], storages: Sequence[Hashable | None], limit: int
) -> list[list[int]]:
    """Tensors (their byte sizes and storage keys, in key order) cut into shards of indexes.

    ``huggingface_hub``'s greedy rule: a tensor goes into the current shard unless it
    would overflow it, which then closes; a tensor larger than ``limit`` gets a shard of its
    own; a tensor whose storage key was seen joins the shard of the first one. Shards stay
    in the order they were closed, and each lists its tensors in key order.
    """
    shards: list[list[int]] = []
    current: list[int] = []
    current_size = 0
    placed: dict[Hashable, list[int]] = {}  # storage -> the shard (list) holding it
    for index, (size, storage) in enumerate(zip(sizes, storages, strict=True)):
        if storage is not None and storage in placed:
            placed[storage].append(index)
            continue
        if size > limit:
            shards.append([index])
            home = shards[-1]
        else:
            if current and current_size + size > limit:
                shards.append(current)
                current, current_size = [], 0
            current.append(index)
            current_size += size
            home = current
        if storage is not None:
            placed[storage] = home
    if current:
        shards.append(current)
    return [sorted(shard) for shard in shards]


def shard_names(name: str, count: int) -> list[str]:
    """``model.safetensors`` in ``count`` shards: ``model-00001-of-0000N.safetensors``, ..."""
    stem, dot, suffix = name.rpartition(".")
    if not dot:
        stem, suffix = name, ""
    tail = f".{suffix}" if dot else ""
    return [f"{stem}-{i:05d}-of-{count:05d}{tail}" for i in range(1, count + 1)]


def shard_pattern(name: str) -> re.Pattern[str]:
    """What the shards of ``name`` are called, for any shard count (nothing else matches)."""
    stem, dot, suffix = name.rpartition(".")
    if not dot:
        stem, suffix = name, ""
    tail = re.escape(f".{suffix}") if dot else ""
    return re.compile(rf"{re.escape(stem)}-[0-9]{{5,}}-of-[0-9]{{5,}}{tail}\Z")


def index_name(name: str) -> str:
    """``model.safetensors`` -> ``model.safetensors.index.json``."""
    return f"{name}{INDEX_SUFFIX}"


def base_name(index: str) -> str:
    """``model.safetensors.index.json`` -> ``model.safetensors`` (the inverse)."""
    return index[: -len(INDEX_SUFFIX)] if index.endswith(INDEX_SUFFIX) else index


def encode_index(
    weight_map: Mapping[str, str],
    *,
    total_size: int,
    header_digests: Mapping[str, str],
    aliases: Mapping[str, str],
    tree: str | None,
    user: Mapping[str, str],
) -> bytes:
    """The index file: HF's layout, keys sorted, with our binding and ``removed -> kept``.

    ``tree`` is the skeleton already encoded as JSON text (None for a flat state dict).
    """
    binding: dict[str, Any] = {"version": BINDING_VERSION, "header_digests": dict(header_digests)}
    if tree is not None:
        binding["tree"] = tree
    metadata: dict[str, Any] = {**user, **aliases}
    metadata[TOTAL_SIZE_KEY] = total_size
    metadata[BINDING_KEY] = canonical_json(binding)
    document = {"metadata": metadata, "weight_map": dict(sorted(weight_map.items()))}
    return (json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


@dataclass(frozen=True)
class Binding:
    """What a statevault index records beyond HF's layout (see the module docstring)."""

    header_digests: Mapping[str, str]
    tree_text: str | None


def decode_binding(metadata: Mapping[str, str], *, source: str) -> Binding | None:
    """Our binding from an index's metadata (values as strings); None in other indexes."""
    text = metadata.get(BINDING_KEY)
    if text is None:
        return None
    try:
        value = json.loads(text)
        digests = value["header_digests"]
        tree = value.get("tree")
        if not isinstance(digests, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in digests.items()
        ):
            raise TypeError
        if tree is not None and not isinstance(tree, str):
            raise TypeError
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
        raise HeaderError(
            f"{source}: metadata[{BINDING_KEY!r}] is not statevault's shard binding (JSON "
            "with 'header_digests'); the index is damaged. Save the checkpoint again"
        ) from None
    return Binding(digests, tree)


def index_aliases(metadata: Mapping[str, str], weight_map: Mapping[str, object]) -> dict[str, str]:
    """HF's ``removed -> kept`` entries of an index's metadata: tied names not stored."""
    return {
        removed: kept
        for removed, kept in metadata.items()
        if removed not in weight_map and kept in weight_map and removed != BINDING_KEY
    }
