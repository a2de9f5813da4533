"""Key mapping on plain lists of names: no torch, no disk."""

from __future__ import annotations

import pytest

from statevault.errors import InvalidArgumentError, KeyMappingError
from statevault.loading.keymap import map_keys, strip_prefixes

MODEL = ["conv.weight", "conv.bias", "fc.weight", "fc.bias"]


def test_dataparallel_prefix_is_stripped_and_recorded() -> None:
    result = map_keys([f"module.{k}" for k in MODEL], MODEL)
    assert result.pairs == {k: f"module.{k}" for k in MODEL}
    (step,) = result.applied
    assert (step.rule, step.count, step.example, step.automatic) == (
        "strip 'module.'",
        4,
        ("module.conv.weight", "conv.weight"),
        True,
    )


def test_nested_wrappers_peel_in_any_order() -> None:
    for wrapped in ("module._orig_mod.", "_orig_mod.module."):
        result = map_keys([wrapped + k for k in MODEL], MODEL)
        assert list(result.pairs) == MODEL, wrapped


def test_fsdp_names_inside_keys_are_removed() -> None:
    keys = ["_fsdp_wrapped_module.conv._fsdp_wrapped_module.weight", "fc.weight"]
    result = map_keys(keys, ["conv.weight", "fc.weight"])
    assert list(result.pairs) == ["conv.weight", "fc.weight"]


def test_nothing_changes_when_the_model_has_the_same_wrapper_or_auto_fix_is_off() -> None:
    keys = [f"module.{k}" for k in MODEL]
    assert list(map_keys(keys, keys).pairs) == keys
    assert list(map_keys(keys, MODEL, auto_fix=False).pairs) == keys


def test_a_submodule_called_module_is_not_a_wrapper() -> None:
    keys = ["module.weight", "fc.weight"]  # not every key starts with module.
    assert list(map_keys(keys, ["weight", "fc.weight"]).pairs) == keys


def test_auto_fix_stands_down_on_collisions() -> None:
    keys = ["_orig_mod.fc.weight", "fc.weight"]
    result = map_keys(keys, ["fc.weight"])
    assert list(result.pairs) == keys
    assert result.applied == ()
    assert "would both become 'fc.weight'" in result.notes[0]


def test_model_side_wrapper_is_added() -> None:
    result = map_keys(MODEL, [f"module._orig_mod.{k}" for k in MODEL])
    assert list(result.pairs) == [f"module._orig_mod.{k}" for k in MODEL]
    assert result.applied[0].rule == "add 'module._orig_mod.' wrapper names"


def test_prefix_selects_and_ignores_the_rest() -> None:
    keys = ["backbone.conv.weight", "backbone.fc.weight", "head.weight"]
    result = map_keys(keys, MODEL, prefix="backbone.")
    assert result.pairs == {
        "conv.weight": "backbone.conv.weight",
        "fc.weight": "backbone.fc.weight",
    }
    assert result.ignored == ("head.weight",)


def test_strip_prefix_keeps_keys_without_it() -> None:
    result = map_keys(["model.fc.weight", "extra"], MODEL, strip_prefix="model.")
    assert list(result.pairs) == ["fc.weight", "extra"]
    assert result.ignored == ()


def test_rename_pairs_apply_in_order() -> None:
    rename = [(r"^fc\.", "head."), (r"^head\.", "classifier.")]
    result = map_keys(["fc.weight", "conv.weight"], MODEL, rename=rename)
    assert list(result.pairs) == ["classifier.weight", "conv.weight"]
    assert [s.count for s in result.applied] == [1, 1]


def test_explicit_collisions_and_bad_rules_raise() -> None:
    with pytest.raises(KeyMappingError, match=r"'a\.x' and 'b\.x' both become 'x'"):
        map_keys(["a.x", "b.x"], ["x"], rename=[(r"^\w+\.", "")])
    with pytest.raises(KeyMappingError, match="not a valid regex"):
        map_keys(["a"], ["a"], rename=[("(", "")])
    with pytest.raises(InvalidArgumentError, match=r"rename=.*\('a',\) is not a \(regex, repl"):
        map_keys(["a"], ["a"], rename=[("a",)])  # type: ignore[list-item]
    with pytest.raises(InvalidArgumentError, match=r"returned None for 'a'; .* must return a str"):
        map_keys(["a"], ["a"], rename=lambda name: None)  # type: ignore[arg-type,return-value]


@pytest.mark.parametrize(
    "rename",
    ["fc", ("fc", "head"), {"fc": "head"}, 3],
    ids=["str", "lone pair", "dict", "int"],
)
def test_a_rename_that_is_not_a_list_of_pairs_is_refused_not_iterated(rename: object) -> None:
    with pytest.raises(InvalidArgumentError, match=r"rename=.* pass a list of \(regex, repl"):
        map_keys(["fc.w"], ["head.w"], rename=rename)  # type: ignore[arg-type]


def test_strip_prefix_takes_one_str_or_several() -> None:
    names = ["model.a", "module.b", "c"]
    one = map_keys(names, ["a", "module.b", "c"], strip_prefix="model.", auto_fix=False)
    assert list(one.pairs) == ["a", "module.b", "c"]  # the str is one prefix, not 6 letters
    several = map_keys(names, ["a", "b", "c"], strip_prefix=["model.", "module."])
    assert list(several.pairs) == ["a", "b", "c"]
    assert several.applied[0].rule == "strip prefixes ['model.', 'module.']"
    # the first matching prefix only, as convert(strip_prefix=...) does
    assert list(map_keys(["a.b.x"], ["b.x"], strip_prefix=("a.", "a.b.")).pairs) == ["b.x"]


@pytest.mark.parametrize("value", ["", [], ["model.", ""], [b"model."], 7])
def test_a_bad_strip_prefix_names_the_argument(value: object) -> None:
    with pytest.raises(InvalidArgumentError, match=r"strip_prefix=.* non-empty str"):
        strip_prefixes(value)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="strip_prefix="):
        map_keys(["a"], ["a"], strip_prefix=value)  # type: ignore[arg-type]


class _OnlyIterable(list[str]):
    """Model names listed on demand: map_keys must not count or search them."""

    def __len__(self) -> int:
        raise AssertionError("counted")

    def __contains__(self, item: object) -> bool:
        raise AssertionError("searched")


def test_model_names_are_only_iterated() -> None:
    assert list(map_keys([f"module.{k}" for k in MODEL], _OnlyIterable(MODEL)).pairs) == MODEL
    assert list(map_keys(MODEL, _OnlyIterable(MODEL)).pairs) == MODEL
