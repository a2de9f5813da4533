"""Why a checkpoint does not fit a model: the likely causes, found from names and shapes.

Pure functions over key lists and shapes (no torch, no I/O), so every rule is tested on plain
data. ``diagnose`` returns causes most likely first; each says what probably happened and the
exact option or code that fixes it (built by ``loading.fixes``). This module holds the
finders that work from key names; shape mismatches are ``loading.shape_causes``'s. Every pass
is linear in the number of keys (times the key depth), so diagnosing a model with many
thousands of keys stays cheap.

May import: ``loading.fixes``, ``loading.shape_causes``, ``loading.keymap``,
``reports.load_entries``. Imported by ``loading.plan``.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from collections.abc import Collection, Mapping, Sequence

from statevault.loading.fixes import Call, option_fix, submodule_fix, unfilled
from statevault.loading.keymap import WRAPPERS
from statevault.loading.shape_causes import shape_causes
from statevault.reports.load_entries import Cause, CauseKind

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


def _wrapper_causes(
    model_keys: Collection[str], checkpoint_keys: Collection[str], call: Call
) -> list[Cause]:
    causes = []
    ckpt_run = _leading_wrappers(checkpoint_keys)
    model_run = _leading_wrappers(model_keys)
    if ckpt_run and not model_run:
        what = " and ".join(WRAPPERS[p] for p in ckpt_run.rstrip(".").split("."))
        causes.append(
            option_fix(
                CauseKind.WRAPPER_PREFIX,
                f"every checkpoint key starts with '{ckpt_run}': it was saved from a model {what}",
                call,
                {"strip_prefix": ckpt_run},
                "auto_fix=True, the default, does this for you; when saving, save "
                f"model.{ckpt_run.rstrip('.')}.state_dict() instead",
            )
        )
    elif model_run and not ckpt_run:
        what = " and ".join(WRAPPERS[p] for p in model_run.rstrip(".").split("."))
        causes.append(
            submodule_fix(
                CauseKind.MODEL_WRAPPED,
                f"every model key starts with '{model_run}': your model is {what}, "
                "the checkpoint was saved from the plain model",
                call,
                model_run,
                "auto_fix=True, the default, maps the names for you",
                whole=True,
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
            option_fix(
                CauseKind.WRAPPER_NAMES,
                f"checkpoint keys contain '{segment}.': submodules were {WRAPPERS[segment]} "
                "when it was saved",
                call,
                {"rename": [(f"(^|\\.){segment}\\.", "\\1")]},
                "auto_fix=True, the default, does this for you",
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
    missing: Collection[str], unexpected: Collection[str], skip_prefix: str, call: Call
) -> list[Cause]:
    causes = []
    found = _best_prefix(missing, unexpected) if missing else None
    if found and found[0] != skip_prefix and found[1] * 2 >= len(missing):
        prefix, count = found
        how_many = f"all {count}" if count == len(missing) else f"{count} of {len(missing)}"
        causes.append(
            option_fix(
                CauseKind.LARGER_CHECKPOINT,
                f"the checkpoint holds a bigger model: {how_many} missing model keys are in it "
                f"under '{prefix}'",
                call,
                {"prefix": prefix},
                "loads just that part; the other checkpoint keys are ignored and listed in the "
                "report",
            )
        )
    found = _best_prefix(unexpected, missing) if unexpected else None
    if found and found[1] * 2 >= len(unexpected):
        prefix, count = found
        how_many = f"all {count}" if count == len(unexpected) else f"{count} of {len(unexpected)}"
        causes.append(
            submodule_fix(
                CauseKind.SMALLER_CHECKPOINT,
                f"the checkpoint holds part of your model: {how_many} unexpected checkpoint keys "
                f"are your model's '{prefix}' sub-tree",
                call,
                prefix,
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


def _rename_causes(
    missing: Mapping[str, Shape], unexpected: Mapping[str, Shape], call: Call
) -> list[Cause]:
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
    return [
        option_fix(
            CauseKind.RENAMED,
            f"renamed layer(s): {len(used_missing)} missing key(s) match unexpected checkpoint "
            f"keys with the same shape under another name ({names}{more}; e.g. checkpoint "
            f"'{first_u}' is model '{first_m}')",
            call,
            {"rename": regexes},
        )
    ]


def _buffer_causes(
    missing: Collection[str], unexpected: Collection[str], buffers: Collection[str], call: Call
) -> list[Cause]:
    if not missing or unexpected or not all(k in buffers for k in missing):
        return []
    example = next(iter(missing))
    if all(k.rpartition(".")[2] == "num_batches_tracked" for k in missing):
        return [
            option_fix(
                CauseKind.MISSING_BUFFERS,
                f"only BatchNorm 'num_batches_tracked' counters are missing ({len(missing)}): "
                "the checkpoint was saved by an old PyTorch or a converter that drops them; "
                "they are only used when BatchNorm has momentum=None",
                call,
                {"strict": False},
                "every other tensor loads and the counters keep their current values",
            )
        ]
    return [
        option_fix(
            CauseKind.MISSING_BUFFERS,
            f"only buffers are missing ({len(missing)}, e.g. '{example}'): they were probably "
            "added to the model, or made persistent, after the checkpoint was saved",
            call,
            {"strict": False},
            "every other tensor loads and these keep their current values",
        )
    ]


def _non_persistent_causes(
    unexpected: Collection[str], non_persistent: Collection[str], call: Call
) -> list[Cause]:
    """Checkpoint keys the model has as buffers it does not save (``persistent=False``)."""
    found = [k for k in unexpected if k in non_persistent]
    if not found:
        return []
    shown = ", ".join(f"'{k}'" for k in found[:3]) + (" ..." if len(found) > 3 else "")
    return [
        option_fix(
            CauseKind.NON_PERSISTENT_BUFFER,
            f"{len(found)} unexpected checkpoint key(s) are non-persistent buffers of the model "
            f"({shown}): the model computes them in __init__ and does not save them; an older "
            "version of it did (transformers ignores such keys)",
            call,
            {"strict": False},
            "the model keeps its computed values and the report lists the keys as unexpected",
        )
    ]


# Names that task heads have: a model built for a new task lacks only these.
_HEAD_HINTS = ("classif", "head", "score", "qa_outputs", "logit", "pooler")


def _is_head(module: str) -> bool:
    """A task head's name, outside any numbered block ('layers.3.mlp.fc1' is not a head)."""
    parts = module.split(".")
    return not any(p.isdigit() for p in parts) and any(
        p == "fc" or any(hint in p.lower() for hint in _HEAD_HINTS) for p in parts
    )


def _new_head_causes(
    model_keys: Collection[str],
    missing: Collection[str],
    unexpected: Collection[str],
    call: Call,
) -> list[Cause]:
    """Missing keys that are whole head modules: a checkpoint of the body for a new task."""
    if not missing or len(missing) * 2 > len(model_keys):
        return []
    modules = {k.rpartition(".")[0] for k in missing}
    if "" in modules or not all(_is_head(m) for m in modules):
        return []
    whole = Counter(k.rpartition(".")[0] for k in model_keys)
    if any(whole[m] != sum(1 for k in missing if k.rpartition(".")[0] == m) for m in modules):
        return []  # only part of a module is missing: not a head that was never trained
    heads = ", ".join(f"'{m}'" for m in sorted(modules)[:5])
    unused = sorted({k.split(".")[0] for k in unexpected})
    also = f"; the checkpoint's own head ({', '.join(unused[:5])}) is not used" if unused else ""
    return [
        option_fix(
            CauseKind.NEW_HEAD,
            f"new task head: the model's {heads} ({len(missing)} key(s)) is not in the "
            f"checkpoint, which was saved for another task (e.g. pre-training){also}",
            call,
            {"strict": False},
            f"everything else loads; the head's tensors {unfilled(call)} and the report "
            "lists them as missing",
        )
    ]


def _optimizer_causes(call: Call) -> list[Cause]:
    source = "state" if call.source == "state" else f"statevault.load({call.source})"
    code = f"optimizer.load_state_dict({source})"
    return [
        Cause(
            CauseKind.OPTIMIZER_STATE,
            "the checkpoint holds an optimizer's state_dict (its 'state' and 'param_groups'), "
            "not a model's",
            f"load it into the optimizer: {code}; load the model from the checkpoint that holds "
            "model.state_dict()",
            code=code,
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
    non_persistent: Collection[str] = (),
    prefix: str | None = None,
    ignored: Sequence[str] = (),
    optimizer: bool = False,
    stored: Mapping[str, str] | None = None,
    call: Call | None = None,
) -> tuple[Cause, ...]:
    """Likely causes, most likely first, for keys compared in the model's namespace.

    ``checkpoint_keys`` are the checkpoint's names after any mapping; ``missing`` maps model
    keys to their model shape and ``unexpected`` checkpoint keys to their stored shape;
    ``mismatches`` are (key, checkpoint shape, model shape); ``non_persistent`` the model's
    buffers that state_dict leaves out; ``optimizer`` says the saved state has an optimizer's
    ``param_groups``; ``stored`` maps mismatched model keys to their checkpoint names; ``call``
    is the call being diagnosed, so each fix is printed as that call, corrected.
    """
    call = call or Call()
    stored = stored or {}
    causes: list[Cause] = []
    if optimizer:
        causes += _optimizer_causes(call)
    if prefix is not None and not checkpoint_keys and ignored:
        tops = sorted({k.split(".")[0] + "." for k in ignored})
        best = _best_prefix(model_keys, ignored)
        choice = best[0] if best else tops[0]
        causes.append(
            option_fix(
                CauseKind.EMPTY_SELECTION,
                f"no checkpoint key starts with prefix '{prefix}'",
                call,
                {"prefix": choice},
                "the checkpoint's top-level prefixes are " + ", ".join(f'"{t}"' for t in tops[:10]),
            )
        )
    causes += _wrapper_causes(model_keys, checkpoint_keys, call)
    if missing or unexpected:
        wrapper_run = _leading_wrappers(checkpoint_keys)
        found = _subtree_causes(list(missing), list(unexpected), wrapper_run, call)
        found += _rename_causes(missing, unexpected, call)
        causes += found
        causes += _non_persistent_causes(list(unexpected), set(non_persistent), call)
        causes += _buffer_causes(list(missing), list(unexpected), set(buffers), call)
        if not found and not optimizer:
            causes += _new_head_causes(model_keys, list(missing), list(unexpected), call)
    causes += shape_causes(mismatches, call, stored)
    return tuple(causes)
