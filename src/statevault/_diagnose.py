"""Why a checkpoint does not fit a model: likely causes and their fixes, from names and shapes.

Pure functions over key lists and shapes (no torch, no I/O), so every rule is tested on plain
data. ``diagnose`` returns causes most likely first; each says what probably happened and the
exact option or code that fixes it. Every pass is linear in the number of keys (times the key
depth), so diagnosing a model with many thousands of keys stays cheap.
"""

from __future__ import annotations

import difflib
import math
import re
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from statevault._keymap import WRAPPERS

Shape = tuple[int, ...]

# Old or foreign names for the same parameter (TF / early LayerNorm and BatchNorm naming).
_SYNONYMS = {
    ("gamma", "weight"),
    ("beta", "bias"),
    ("moving_mean", "running_mean"),
    ("moving_variance", "running_var"),
    ("kernel", "weight"),
}
_MAX_CANDIDATES = 50  # bounds rename matching to linear time on huge, all-different models
_VOCAB_HINTS = ("embed", "vocab", "wte", "token", "lm_head", "word")


@dataclass(frozen=True)
class Cause:
    """A likely reason for the mismatch, and what to do about it."""

    kind: str  # wrapper_prefix, model_wrapped, larger_checkpoint, smaller_checkpoint, ...
    summary: str
    fix: str

    def __str__(self) -> str:
        return f"{self.summary}\n  Fix: {self.fix}"


def attribute_path(prefix: str) -> str:
    """'layers.3.attn.' -> 'layers[3].attn' (how the submodule is reached in Python)."""
    path = ""
    for part in prefix.rstrip(".").split("."):
        path += f"[{part}]" if part.isdigit() else f".{part}"
    return path.lstrip(".")


def _leading_wrappers(keys: Collection[str]) -> str:
    """The run of wrapper names (e.g. 'module._orig_mod.') that starts every key, or ''."""
    run = ""
    while True:
        step = next(
            (f"{w}." for w in WRAPPERS if keys and all(k.startswith(run + f"{w}.") for k in keys)),
            None,
        )
        if step is None:
            return run
        run += step


def _wrapper_causes(model_keys: Collection[str], checkpoint_keys: Collection[str]) -> list[Cause]:
    causes = []
    ckpt_run = _leading_wrappers(checkpoint_keys)
    model_run = _leading_wrappers(model_keys)
    if ckpt_run and not model_run:
        what = " and ".join(WRAPPERS[p] for p in ckpt_run.rstrip(".").split("."))
        causes.append(
            Cause(
                "wrapper_prefix",
                f"every checkpoint key starts with '{ckpt_run}': it was saved from a model {what}",
                f'pass strip_prefix="{ckpt_run}" (auto_fix=True, the default, does this for you); '
                f"when saving, save model.{ckpt_run.rstrip('.')}.state_dict() instead",
            )
        )
    elif model_run and not ckpt_run:
        what = " and ".join(WRAPPERS[p] for p in model_run.rstrip(".").split("."))
        causes.append(
            Cause(
                "model_wrapped",
                f"every model key starts with '{model_run}': your model is {what}, "
                "the checkpoint was saved from the plain model",
                f"load into the inner model: load_into(model.{model_run.rstrip('.')}, source) "
                "(auto_fix=True, the default, maps the names for you)",
            )
        )
    inner = [
        s
        for s in ("_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module")
        if s not in ckpt_run.split(".")
        and any(s in k.split(".") for k in checkpoint_keys)
        and not any(s in k.split(".") for k in model_keys)
    ]
    for segment in inner:
        causes.append(
            Cause(
                "wrapper_names",
                f"checkpoint keys contain '{segment}.': submodules were {WRAPPERS[segment]} "
                "when it was saved",
                f'pass rename=[(r"(^|\\.){segment}\\.", r"\\1")] '
                "(auto_fix=True, the default, does this for you)",
            )
        )
    return causes


def _best_prefix(inner: Collection[str], outer: Collection[str]) -> tuple[str, int] | None:
    """The prefix p under which the most ``inner`` keys appear in ``outer`` (p + key), if any."""
    inner_set = set(inner)
    counts: Counter[str] = Counter()
    for key in outer:
        dot = key.find(".")
        while dot != -1:
            if key[dot + 1 :] in inner_set:
                counts[key[: dot + 1]] += 1
            dot = key.find(".", dot + 1)
    if not counts:
        return None
    return counts.most_common(1)[0]


def _subtree_causes(
    missing: Collection[str], unexpected: Collection[str], skip_prefix: str
) -> list[Cause]:
    causes = []
    found = _best_prefix(missing, unexpected) if missing else None
    if found and found[0] != skip_prefix and found[1] * 2 >= len(missing):
        prefix, count = found
        how_many = f"all {count}" if count == len(missing) else f"{count} of {len(missing)}"
        causes.append(
            Cause(
                "larger_checkpoint",
                f"the checkpoint holds a bigger model: {how_many} missing model keys are in it "
                f"under '{prefix}'",
                f'pass prefix="{prefix}" to load just that part (the other checkpoint keys are '
                "ignored and listed in the report)",
            )
        )
    found = _best_prefix(unexpected, missing) if unexpected else None
    if found and found[1] * 2 >= len(unexpected):
        prefix, count = found
        how_many = f"all {count}" if count == len(unexpected) else f"{count} of {len(unexpected)}"
        causes.append(
            Cause(
                "smaller_checkpoint",
                f"the checkpoint holds part of your model: {how_many} unexpected checkpoint keys "
                f"are your model's '{prefix}' sub-tree",
                f"load it into that submodule: load_into(model.{attribute_path(prefix)}, source)",
            )
        )
    return causes


def _rename_regex(old: str, new: str, positions: set[str]) -> tuple[str, str]:
    o = re.escape(old)
    if positions == {"first"}:
        return f"^{o}\\.", f"{new}."
    if positions == {"last"}:
        return f"\\.{o}$", f".{new}"
    if positions == {"middle"}:
        return f"\\.{o}\\.", f".{new}."
    return f"(^|\\.){o}(\\.|$)", f"\\1{new}\\2"


def _rename_causes(missing: Mapping[str, Shape], unexpected: Mapping[str, Shape]) -> list[Cause]:
    """Missing and unexpected keys that differ in exactly one name component, with equal shapes."""
    index: dict[tuple[int, int, str], list[str]] = {}
    for key in unexpected:
        parts = key.split(".")
        for i in range(len(parts)):
            template = ".".join([*parts[:i], "*", *parts[i + 1 :]])
            index.setdefault((len(parts), i, template), []).append(key)
    rules: dict[tuple[str, str], list[tuple[str, str, str]]] = {}
    for key, shape in missing.items():
        parts = key.split(".")
        for i in range(len(parts)):
            template = ".".join([*parts[:i], "*", *parts[i + 1 :]])
            candidates = index.get((len(parts), i, template), ())
            if len(candidates) > _MAX_CANDIDATES:  # "*.weight" fits everything: no evidence
                continue
            for other in candidates:
                if unexpected[other] != shape:
                    continue
                where = "first" if i == 0 else "last" if i == len(parts) - 1 else "middle"
                old = other.split(".")[i]
                rules.setdefault((old, parts[i]), []).append((other, key, where))

    def score(item: tuple[tuple[str, str], list[tuple[str, str, str]]]) -> tuple[float, ...]:
        (old, new), pairs = item
        similar = difflib.SequenceMatcher(None, old, new).ratio()
        return ((old, new) in _SYNONYMS, len(pairs), similar)

    used_missing: set[str] = set()
    used_unexpected: set[str] = set()
    accepted: list[tuple[str, str, list[tuple[str, str, str]]]] = []
    for (old, new), pairs in sorted(rules.items(), key=score, reverse=True):
        fresh = [p for p in pairs if p[0] not in used_unexpected and p[1] not in used_missing]
        if not fresh:
            continue
        accepted.append((old, new, fresh))
        used_unexpected.update(p[0] for p in fresh)
        used_missing.update(p[1] for p in fresh)
    if not accepted:
        return []
    order = {key: i for i, key in enumerate(missing)}
    accepted.sort(key=lambda rule: min(order[p[1]] for p in rule[2]))  # in model order
    names = ", ".join(f"'{old}' -> '{new}'" for old, new, _ in accepted[:5])
    more = f" and {len(accepted) - 5} more" if len(accepted) > 5 else ""
    first_u, first_m, _ = accepted[0][2][0]
    regexes = [_rename_regex(old, new, {p[2] for p in pairs}) for old, new, pairs in accepted[:5]]
    suggestion = ", ".join(f'(r"{pattern}", r"{repl}")' for pattern, repl in regexes)
    return [
        Cause(
            "renamed",
            f"renamed layer(s): {len(used_missing)} missing key(s) match unexpected checkpoint "
            f"keys with the same shape under another name ({names}{more}; e.g. checkpoint "
            f"'{first_u}' is model '{first_m}')",
            f"pass rename=[{suggestion}]",
        )
    ]


def _shape_causes(mismatches: Sequence[tuple[str, Shape, Shape]]) -> list[Cause]:
    transposed = [m for m in mismatches if len(m[1]) == 2 and m[1] == m[2][::-1]]
    first_dim: dict[tuple[int, int], list[str]] = {}
    reshaped, other = [], []
    for key, ckpt, model in mismatches:
        if len(ckpt) == 2 and ckpt == model[::-1]:
            continue
        if len(ckpt) == len(model) >= 1 and ckpt[1:] == model[1:]:
            first_dim.setdefault((ckpt[0], model[0]), []).append(key)
        elif math.prod(ckpt) == math.prod(model):
            reshaped.append(key)
        else:
            other.append(key)
    causes = []
    if transposed:
        key, ckpt, model = transposed[0]
        causes.append(
            Cause(
                "transposed",
                f"{len(transposed)} weight(s) are transposed: e.g. '{key}' is {list(ckpt)} in the "
                f"checkpoint and {list(model)} in the model (saved from a layer that stores "
                "in x out, such as GPT-2's Conv1D, or converted from another framework)",
                "transpose them, then load the dict: state = statevault.load(path); "
                "state[key] = state[key].t().contiguous() for those keys; "
                "statevault.load_into(model, state)",
            )
        )
    for (ckpt_n, model_n), keys in first_dim.items():
        modules = sorted({k.rpartition(".")[0] or k for k in keys})
        vocab = any(hint in k.lower() for k in keys for hint in _VOCAB_HINTS)
        what = "vocabulary size" if vocab else "number of classes / output size"
        causes.append(
            Cause(
                "first_dim",
                f"the {what} differs: {', '.join(repr(m) for m in modules[:5])} has "
                f"{ckpt_n} in the checkpoint and {model_n} in the model (first dimension of "
                f"{len(keys)} tensor(s))",
                f"to fine-tune with a new {what.split(' / ')[0]}, load with strict=False: "
                "everything else loads and these keep their fresh initialisation "
                "(the report lists them as skipped)",
            )
        )
    if reshaped:
        causes.append(
            Cause(
                "reshaped",
                f"{len(reshaped)} tensor(s) hold the same number of elements in another shape "
                f"(e.g. '{reshaped[0]}'): a layer type changed, such as Conv 1x1 vs Linear",
                "reshape them in the dict before loading (state[key] = state[key].reshape(...)) "
                "and pass the dict as source",
            )
        )
    if other:
        causes.append(
            Cause(
                "shape",
                f"{len(other)} tensor(s) have different sizes (e.g. '{other[0]}'): the model was "
                "built with a different configuration than the checkpoint",
                "build the model with the checkpoint's configuration, or load with strict=False "
                "to skip them",
            )
        )
    return causes


def _buffer_causes(
    missing: Collection[str], unexpected: Collection[str], buffers: Collection[str]
) -> list[Cause]:
    if not missing or unexpected or not all(k in buffers for k in missing):
        return []
    example = next(iter(missing))
    if all(k.rpartition(".")[2] == "num_batches_tracked" for k in missing):
        return [
            Cause(
                "missing_buffers",
                f"only BatchNorm 'num_batches_tracked' counters are missing ({len(missing)}): "
                "the checkpoint was saved by an old PyTorch or a converter that drops them; "
                "they are only used when BatchNorm has momentum=None",
                "load with strict=False: every other tensor loads and the counters keep their "
                "current values",
            )
        ]
    return [
        Cause(
            "missing_buffers",
            f"only buffers are missing ({len(missing)}, e.g. '{example}'): they were probably "
            "added to the model, or made persistent, after the checkpoint was saved",
            "load with strict=False: every other tensor loads and these keep their current values",
        )
    ]


def diagnose(
    *,
    model_keys: Collection[str],
    checkpoint_keys: Collection[str],
    missing: Mapping[str, Shape],
    unexpected: Mapping[str, Shape],
    mismatches: Sequence[tuple[str, Shape, Shape]] = (),
    buffers: Collection[str] = (),
    prefix: str | None = None,
    ignored: Sequence[str] = (),
) -> tuple[Cause, ...]:
    """Likely causes, most likely first, for keys compared in the model's namespace.

    ``checkpoint_keys`` are the checkpoint's names after any mapping; ``missing`` maps model
    keys to their model shape and ``unexpected`` checkpoint keys to their stored shape;
    ``mismatches`` are (key, checkpoint shape, model shape).
    """
    causes: list[Cause] = []
    if prefix is not None and not checkpoint_keys and ignored:
        tops = sorted({k.split(".")[0] + "." for k in ignored})
        causes.append(
            Cause(
                "empty_selection",
                f"no checkpoint key starts with prefix '{prefix}'",
                "pick one of the checkpoint's top-level prefixes: "
                + ", ".join(f'"{t}"' for t in tops[:10]),
            )
        )
    causes += _wrapper_causes(model_keys, checkpoint_keys)
    if missing or unexpected:
        wrapper_run = _leading_wrappers(checkpoint_keys)
        causes += _subtree_causes(list(missing), list(unexpected), wrapper_run)
        causes += _rename_causes(missing, unexpected)
        causes += _buffer_causes(list(missing), list(unexpected), set(buffers))
    causes += _shape_causes(mismatches)
    return tuple(causes)
