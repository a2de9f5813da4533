"""Key mapping over combinations of wrappers on either side, asserting the whole result.

A wrapped name is modelled as a stack of outer wrappers (DDP's ``module``, ``torch.compile``'s
``_orig_mod``, FSDP's ``_fsdp_wrapped_module``; DDP may appear twice) plus activation
checkpointing on some layers (``layers.<i>._checkpoint_wrapped_module.<param>``). The oracle
below works on those stacks, not on strings, and says what ``map_keys`` must return: every
pair, every applied step (rule, reason, count, example, automatic) and no notes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statevault.errors import InvalidArgumentError, KeyMappingError
from statevault.loading.keymap import WRAPPERS, KeyMap, map_keys
from statevault.reports.load_entries import AppliedMapping

LAYERS = 3
BASES = [
    *(f"layers.{i}.{param}" for i in range(LAYERS) for param in ("weight", "bias")),
    "head.weight",
]
OUTER = ("module", "_orig_mod", "_fsdp_wrapped_module")
CHECKPOINTED = "_checkpoint_wrapped_module"
ANYWHERE = ("_orig_mod", "_fsdp_wrapped_module", CHECKPOINTED)


@dataclass(frozen=True)
class Wrapping:
    """Outer wrappers (outermost first) and the layers wrapped for activation checkpointing."""

    outer: tuple[str, ...] = ()
    checkpointed: frozenset[int] = field(default_factory=frozenset)

    def name(self, base: str) -> str:
        parts = base.split(".")
        if parts[0] == "layers" and int(parts[1]) in self.checkpointed:
            parts.insert(2, CHECKPOINTED)
        return ".".join([*self.outer, *parts])

    def names(self) -> list[str]:
        return [self.name(base) for base in BASES]

    def has(self, segment: str) -> bool:
        return bool(self.checkpointed) if segment == CHECKPOINTED else segment in self.outer

    def without(self, segment: str) -> Wrapping:
        if segment == CHECKPOINTED:
            return Wrapping(self.outer)
        return Wrapping(tuple(s for s in self.outer if s != segment), self.checkpointed)


def _step(
    rule: str, reason: str, before: list[str], after: list[str], originals: list[str]
) -> AppliedMapping:
    changed = [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b]
    first = changed[0]
    return AppliedMapping(rule, reason, len(changed), (originals[first], after[first]), True)


def expected_map(checkpoint: Wrapping, model: Wrapping) -> KeyMap:
    """What auto_fix must make of a checkpoint saved with ``checkpoint`` into ``model``."""
    originals = checkpoint.names()
    current, steps = checkpoint, []
    model_leading = model.outer[:1] == ("module",)
    for _ in range(4):
        progressed = False
        if current.outer[:1] == ("module",) and not model_leading:
            unwrapped = Wrapping(current.outer[1:], current.checkpointed)
            steps.append(
                _step(
                    "strip 'module.'",
                    "checkpoint saved from a model " + WRAPPERS["module"],
                    current.names(),
                    unwrapped.names(),
                    originals,
                )
            )
            current, progressed = unwrapped, True
        for segment in ANYWHERE:
            if current.has(segment) and not model.has(segment):
                unwrapped = current.without(segment)
                steps.append(
                    _step(
                        f"remove '{segment}.'",
                        "checkpoint saved from a model " + WRAPPERS[segment],
                        current.names(),
                        unwrapped.names(),
                        originals,
                    )
                )
                current, progressed = unwrapped, True
        if not progressed:
            break
    leading = model_leading and current.outer[:1] != ("module",)
    added = [s for s in ANYWHERE if not current.has(s) and model.has(s)]
    names = current.names()
    if leading or added:
        plain = Wrapping(model.outer[1:] if leading else model.outer, model.checkpointed)
        for segment in added:
            plain = plain.without(segment)
        by_plain = dict(zip(plain.names(), model.names(), strict=True))
        model_names = set(model.names())
        wrapped = [n if n in model_names else by_plain.get(n, n) for n in names]
        if wrapped != names:
            attribute = ".".join([*(["module"] if leading else []), *added])
            what = " and ".join(WRAPPERS[s] for s in [*(["module"] if leading else []), *added])
            steps.append(
                _step(
                    f"add '{attribute}.' wrapper names",
                    f"the model is {what}; load into the unwrapped model to avoid this",
                    names,
                    wrapped,
                    originals,
                )
            )
            names = wrapped
    return KeyMap(pairs=dict(zip(names, originals, strict=True)), applied=tuple(steps))


wrappings = st.builds(
    Wrapping,
    st.lists(st.sampled_from(OUTER), max_size=3).map(tuple),
    st.frozensets(st.integers(0, LAYERS - 1)),
)


@settings(max_examples=300, deadline=None)
@given(checkpoint=wrappings, model=wrappings)
def test_auto_fix_over_any_wrappers_on_either_side(checkpoint: Wrapping, model: Wrapping) -> None:
    assert map_keys(checkpoint.names(), model.names()) == expected_map(checkpoint, model)


@pytest.mark.parametrize(
    ("checkpoint", "model", "matches"),
    [
        (Wrapping(("module", "module")), Wrapping(), True),  # DDP twice, plain model
        (Wrapping(("module", "module")), Wrapping(("module",)), False),  # one DDP too many
        (Wrapping(("module",)), Wrapping(("module",)), True),  # same wrapper on both sides
        (Wrapping(("_orig_mod",)), Wrapping(("_orig_mod",)), True),
        (Wrapping(checkpointed=frozenset({1})), Wrapping(), True),  # some layers checkpointed
        (Wrapping(), Wrapping(checkpointed=frozenset({0, 2})), True),
        (  # compile + FSDP + checkpoint wrapping together, saved wrapped, loaded plain
            Wrapping(("_orig_mod", "_fsdp_wrapped_module"), frozenset({0, 1, 2})),
            Wrapping(),
            True,
        ),
        (  # ... and the other way round
            Wrapping(),
            Wrapping(("module", "_orig_mod", "_fsdp_wrapped_module"), frozenset({2})),
            True,
        ),
        (Wrapping(("_orig_mod", "module")), Wrapping(("module",)), True),
    ],
)
def test_named_combinations_map_onto_the_model_exactly_when_they_can(
    checkpoint: Wrapping, model: Wrapping, matches: bool
) -> None:
    result = map_keys(checkpoint.names(), model.names())
    assert result == expected_map(checkpoint, model)
    assert (set(result.pairs) == set(model.names())) is matches


def test_ddp_twice_is_peeled_in_two_recorded_steps() -> None:
    result = map_keys(["module.module.a.w", "module.module.b.w"], ["a.w", "b.w"])
    assert result == KeyMap(
        pairs={"a.w": "module.module.a.w", "b.w": "module.module.b.w"},
        applied=(
            AppliedMapping(
                "strip 'module.'",
                "checkpoint saved from a model wrapped in DataParallel/DistributedDataParallel",
                2,
                ("module.module.a.w", "module.a.w"),
                True,
            ),
            AppliedMapping(
                "strip 'module.'",
                "checkpoint saved from a model wrapped in DataParallel/DistributedDataParallel",
                2,
                ("module.module.a.w", "a.w"),
                True,
            ),
        ),
    )


def test_partial_activation_checkpointing_counts_only_the_wrapped_keys() -> None:
    keys = ["a._checkpoint_wrapped_module.w", "b.w", "c._checkpoint_wrapped_module.w"]
    result = map_keys(keys, ["a.w", "b.w", "c.w"])
    assert result == KeyMap(
        pairs={"a.w": keys[0], "b.w": "b.w", "c.w": keys[2]},
        applied=(
            AppliedMapping(
                "remove '_checkpoint_wrapped_module.'",
                "checkpoint saved from a model wrapped with checkpoint_wrapper "
                "(activation checkpointing)",
                2,
                (keys[0], "a.w"),
                True,
            ),
        ),
    )


def test_model_side_compile_and_fsdp_are_named_together() -> None:
    model = ["_orig_mod._fsdp_wrapped_module.a.w", "_orig_mod._fsdp_wrapped_module.b.w"]
    result = map_keys(["a.w", "b.w"], model)
    assert result == KeyMap(
        pairs={model[0]: "a.w", model[1]: "b.w"},
        applied=(
            AppliedMapping(
                "add '_orig_mod._fsdp_wrapped_module.' wrapper names",
                "the model is compiled with torch.compile and wrapped in FullyShardedDataParallel"
                " (FSDP); load into the unwrapped model to avoid this",
                2,
                ("a.w", model[0]),
                True,
            ),
        ),
    )


def test_model_keys_alike_without_wrappers_stop_the_model_side_fix_with_a_note() -> None:
    model = ["_orig_mod.a.w", "a._orig_mod.w"]
    result = map_keys(["a.w"], model)
    assert result == KeyMap(
        pairs={"a.w": "a.w"},
        notes=(
            "auto_fix did not add wrapper names: model keys '_orig_mod.a.w' and "
            "'a._orig_mod.w' differ only in them",
        ),
    )


def test_a_checkpoint_side_collision_is_a_note_naming_both_keys() -> None:
    result = map_keys(["module._orig_mod.x", "module.x"], ["x"])
    # module. is stripped (every key has it); then _orig_mod would collide, so it stays
    assert result == KeyMap(
        pairs={"_orig_mod.x": "module._orig_mod.x", "x": "module.x"},
        applied=(
            AppliedMapping(
                "strip 'module.'",
                "checkpoint saved from a model wrapped in DataParallel/DistributedDataParallel",
                2,
                ("module._orig_mod.x", "_orig_mod.x"),
                True,
            ),
        ),
        notes=(
            "auto_fix did not remove '_orig_mod.': 'module._orig_mod.x' and 'module.x' would "
            "both become 'x'",
        ),
    )


def test_explicit_steps_after_unwrapping_record_everything_in_order() -> None:
    keys = ["module.backbone.fc.weight", "module.backbone.model.conv.bias", "module.head.w"]
    result = map_keys(
        keys,
        ["classifier.weight", "conv.bias"],
        prefix="backbone.",
        strip_prefix="model.",
        rename=[(r"^fc\.", "classifier.")],
    )
    assert result == KeyMap(
        pairs={"classifier.weight": keys[0], "conv.bias": keys[1]},
        ignored=("module.head.w",),
        applied=(
            AppliedMapping(
                "strip 'module.'",
                "checkpoint saved from a model wrapped in DataParallel/DistributedDataParallel",
                3,
                (keys[0], "backbone.fc.weight"),
                True,
            ),
            AppliedMapping(
                "select prefix 'backbone.'",
                "only this sub-tree is loaded, without the prefix",
                2,
                (keys[0], "fc.weight"),
            ),
            AppliedMapping(
                "strip prefix 'model.'", "from the keys that have it", 1, (keys[1], "conv.bias")
            ),
            AppliedMapping(
                "rename '^fc\\\\.' -> 'classifier.'", "rename", 1, (keys[0], "classifier.weight")
            ),
        ),
    )


def test_a_rename_function_is_named_in_the_step_and_collisions_raise_naming_both_keys() -> None:
    def to_upper(name: str) -> str:
        return name.upper()

    result = map_keys(["a", "b"], ["A", "B"], rename=to_upper, auto_fix=False)
    assert result == KeyMap(
        pairs={"A": "a", "B": "b"},
        applied=(AppliedMapping("rename with to_upper()", "rename", 2, ("a", "A")),),
    )
    with pytest.raises(KeyMappingError) as caught:
        map_keys(["x.a", "y.a", "z.b"], ["a", "b"], rename=[(r"^\w\.", "")])
    assert str(caught.value) == (
        "rename '^\\\\w\\\\.' -> '': checkpoint keys 'x.a' and 'y.a' both become 'a'; "
        "make the mapping one-to-one"
    )


def test_an_empty_model_still_unwraps_the_checkpoint() -> None:
    result = map_keys(["module.a", "module.b"], [])
    assert result.pairs == {"a": "module.a", "b": "module.b"}


def test_a_wrapper_name_inside_a_longer_name_is_not_a_wrapper() -> None:
    # the model's 'a_orig_mod' is no compiled model: the checkpoint's _orig_mod still goes
    result = map_keys(["_orig_mod.a_orig_mod.w"], ["a_orig_mod.w"])
    assert result.pairs == {"a_orig_mod.w": "_orig_mod.a_orig_mod.w"}
    # ... and adding DDP's prefix names only 'module.'
    added = map_keys(["a_orig_mod.w"], ["module.a_orig_mod.w"])
    assert [step.rule for step in added.applied] == ["add 'module.' wrapper names"]
    assert added.pairs == {"module.a_orig_mod.w": "a_orig_mod.w"}


def test_at_most_four_rounds_of_unwrapping() -> None:
    keys = ["module." * 5 + "a"]
    result = map_keys(keys, ["a"])
    assert result.pairs == {"module.a": keys[0]}
    assert [step.example for step in result.applied] == [
        (keys[0], "module." * (4 - i) + "a") for i in range(4)
    ]


def test_a_blocked_step_does_not_stop_the_next_round() -> None:
    keys = ["_orig_mod.module.a", "_orig_mod.module._fsdp_wrapped_module.a"]
    result = map_keys(keys, ["a", "b"])
    assert result.pairs == {"a": keys[0], "_fsdp_wrapped_module.a": keys[1]}
    assert [step.rule for step in result.applied] == ["remove '_orig_mod.'", "strip 'module.'"]
    assert result.notes == (
        "auto_fix did not remove '_fsdp_wrapped_module.': '_orig_mod.module.a' and "
        "'_orig_mod.module._fsdp_wrapped_module.a' would both become 'module.a'",
        "auto_fix did not remove '_fsdp_wrapped_module.': '_orig_mod.module.a' and "
        "'_orig_mod.module._fsdp_wrapped_module.a' would both become 'a'",
    )


class _Upper:
    """A rename callable without a __name__: the step names its type."""

    def __call__(self, name: str) -> str:
        return name.upper()


def test_a_rename_object_is_named_by_its_type() -> None:
    result = map_keys(["a"], ["A"], rename=_Upper(), auto_fix=False)
    assert result.applied == (AppliedMapping("rename with _Upper()", "rename", 1, ("a", "A")),)


@pytest.mark.parametrize("prefix", ["", 5, ["a."]])
def test_a_bad_prefix_is_refused_whole(prefix: object) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        map_keys(["a.x"], ["x"], prefix=prefix)  # type: ignore[arg-type]
    assert str(caught.value) == (
        f"prefix={prefix!r} is not a prefix: pass one non-empty str such as 'backbone.' (the "
        "sub-tree of the checkpoint to load)"
    )


def test_bad_strip_prefix_and_rename_messages_are_whole() -> None:
    with pytest.raises(InvalidArgumentError) as strip:
        map_keys(["a"], ["a"], strip_prefix=[""])
    assert str(strip.value) == (
        "strip_prefix=[''] is not a prefix: pass a non-empty str such as 'model.' or a list of "
        "them such as ['model.', 'module.'] (the first one a key starts with is removed)"
    )
    with pytest.raises(InvalidArgumentError) as rename:
        map_keys(["a"], ["a"], rename="fc")  # type: ignore[arg-type]
    assert str(rename.value) == (
        "rename='fc' is not a rename rule: pass a list of (regex, replacement) pairs such as "
        "[(r'^fc\\.', 'classifier.')], or a function from the checkpoint's name to the model's"
    )
    with pytest.raises(InvalidArgumentError) as returned:
        map_keys(["a"], ["a"], rename=lambda name: 3)  # type: ignore[arg-type,return-value]
    assert str(returned.value) == (
        "rename=: rename with <lambda>() returned 3 for 'a'; a rename function must return a str"
    )
