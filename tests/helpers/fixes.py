"""Reading the fix out of an error message and running it, as a user would."""

from __future__ import annotations

import ast
from typing import Any


def run_fix(code: str, namespace: dict[str, Any]) -> Any:
    """Run printed fix code; the value of its last expression (the load call) is returned."""
    tree = ast.parse(code)
    last = tree.body.pop()
    assert isinstance(last, ast.Expr), code
    exec(compile(tree, "<fix>", "exec"), namespace)
    return eval(compile(ast.Expression(last.value), "<fix>", "eval"), namespace)


def printed_fix(message: str) -> str:
    """The code after 'Fix: ' in an error message (the longest part that parses)."""
    text = message.split("Fix: ", 1)[1].splitlines()[0]
    ends = [i + 1 for i, ch in enumerate(text) if ch == ")"]
    for end in reversed(ends):
        try:
            ast.parse(text[:end])
        except SyntaxError:
            continue
        return text[:end]
    raise AssertionError(f"no code in {text!r}")


def printed_options(code: str) -> dict[str, Any]:
    """The keyword arguments of the statevault call in printed code, evaluated as literals."""
    calls = [
        node
        for node in ast.walk(ast.parse(code))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "statevault"
        and node.func.attr != "load"
    ]
    assert len(calls) == 1, code
    return {kw.arg: ast.literal_eval(kw.value) for kw in calls[0].keywords if kw.arg}
