"""``statevault inspect``: what is inside a checkpoint, from its header alone.

Calls the public function of the same name. May be imported by: ``statevault.cli`` only.
"""

from __future__ import annotations

import json
from typing import Any

import click
from rich.markup import escape
from rich.tree import Tree

import statevault
from statevault import CheckpointSummary, ModuleNode, shown
from statevault.cli._output import NAME_CHARS, VALUE_CHARS, emit_json, human_bytes, stdout_console
from statevault.cli.ls_cmd import step_file, step_option
from statevault.cli.storage_option import storage_option


def _text(text: str, limit: int = NAME_CHARS) -> str:
    """File-supplied text ready for rich: control characters escaped, shortened, no markup."""
    return escape(shown(text, limit=limit))


def _leaf_label(node: ModuleNode) -> str:
    if node.alias_of is not None:
        return f"{_text(node.name)}  [dim]tied to {_text(node.alias_of)}[/]"
    meta = node.tensor
    assert meta is not None  # a leaf without children is a tensor or an alias
    shape = "[" + ", ".join(str(d) for d in meta.shape) + "]"
    return (
        f"{_text(node.name)}  [cyan]{meta.dtype_name}[/] {shape}  "
        f"{meta.numel:,} · {human_bytes(meta.nbytes)}"
    )


def _add(branch: Tree, node: ModuleNode, depth: int | None) -> None:
    for child in node.children:
        if not child.children:
            branch.add(_leaf_label(child))
            continue
        label = (
            f"[bold]{_text(child.name)}[/]  {child.numel:,} params · "
            f"{human_bytes(child.nbytes)} · {child.count} tensor(s)"
        )
        if child.tensor is not None:  # a name that is both a tensor and a prefix
            label += f"  (itself {child.tensor.dtype_name} {list(child.tensor.shape)})"
        sub = branch.add(label)
        if depth is None or depth > 1:
            _add(sub, child, None if depth is None else depth - 1)


def render(summary: CheckpointSummary, *, depth: int | None) -> None:
    console = stdout_console()
    if summary.format_version is not None:
        kind = f"statevault format {summary.format_version}"
    else:
        kind = {
            "safetensors": "plain safetensors",
            "sharded": "sharded checkpoint",
            "folder": "checkpoint folder",
            "dcp": "distributed checkpoint (statevault.dcp)",
            "distcp": "distributed checkpoint (DCP FileSystemWriter)",
        }.get(summary.kind, f"{summary.kind} (weights-only loader)")
    if summary.has_checksums:
        checks = "xxh3-64 checksums"
    elif summary.kind in ("torch", "distcp"):
        checks = "zip CRC-32 per entry"  # what verify checks on a torch zip file
    else:
        checks = "no checksums"
    tied = f" (+{len(summary.aliases)} tied)" if summary.aliases else ""
    console.print(f"[bold]{_text(summary.path)}[/]  {kind} · {checks}")
    console.print(
        f"{len(summary.tensors)} tensor(s){tied} · {summary.numel:,} params · "
        f"{human_bytes(summary.nbytes)} of tensor data · file {human_bytes(summary.file_size)}"
    )
    tree = Tree("[bold]tensors[/]")
    _add(tree, summary.root, depth)
    console.print(tree)
    if summary.files:
        console.print("[bold]files[/]")
        for entry in summary.files:
            key = f" -> {entry.key}" if entry.key is not None and entry.status == "loaded" else ""
            note = f" ({entry.note})" if entry.note and entry.status != "loaded" else ""
            console.print(f"  {escape(entry.file)}{escape(key)}: {escape(entry.status + note)}")
    if summary.metadata:
        console.print("[bold]metadata[/]")
        for key, value in summary.metadata.items():
            console.print(f"  {_text(key)}: {_text(value, VALUE_CHARS)}")
    if summary.state is not None:
        console.print("[bold]non-tensor state[/]")
        for path, value in state_lines(summary.state):
            console.print(f"  {_text(path)} = {escape(value)}")
    if summary.notes:  # e.g. temporary files that killed saves left in a directory
        console.print("[bold]notes[/]")
        for note in summary.notes:
            console.print(f"  {_text(note, VALUE_CHARS)}")


def state_lines(value: Any, path: str = "") -> list[tuple[str, str]]:
    """One ``(path, value as shown)`` per leaf; lists of plain values stay on one line."""
    if isinstance(value, dict):
        return [line for key, item in value.items() for line in state_lines(item, _join(path, key))]
    if isinstance(value, list) and any(isinstance(item, (dict, list)) for item in value):
        return [
            line for i, item in enumerate(value) for line in state_lines(item, _join(path, str(i)))
        ]
    return [(path or "<root>", _value_text(value))]


def _value_text(value: Any) -> str:
    """A leaf as shown: JSON-like, escaped and shortened (a 100 MB string costs ~nothing)."""
    if isinstance(value, str):
        return f'"{shown(value, limit=VALUE_CHARS)}"'
    return shown(json.dumps(value, ensure_ascii=False), limit=VALUE_CHARS)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


@click.command("inspect")
@click.argument("path", type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document for scripts.")
@click.option(
    "--depth",
    type=click.IntRange(min=1),
    default=None,
    help="Show the module tree only this many levels deep (totals still cover everything).",
)
@step_option()
@storage_option
def inspect_command(
    path: str,
    as_json: bool,
    depth: int | None,
    step: int | None,
    storage_options: dict[str, Any] | None,
) -> None:
    """Show what PATH holds: module tree, shapes, dtypes, sizes, metadata, state.

    PATH is a statevault or safetensors file, a .pt/.pth/.bin file (read through torch's
    weights-only loader), a shard index, or a folder (sharded, save_pretrained, a Trainer
    checkpoint-N, accelerate save_state), or any of those at an s3:// (fsspec) URL. Only
    headers are read.
    """
    summary = statevault.inspect(
        step_file(path, step, storage_options), storage_options=storage_options
    )
    if as_json:
        emit_json(summary.to_dict())
    else:
        render(summary, depth=depth)
