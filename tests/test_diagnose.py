"""Cause detection on plain key lists and shapes: no torch, no disk."""

from __future__ import annotations

from statevault._diagnose import attribute_path, diagnose

W = (4, 4)
B = (4,)


def _kinds(**kwargs: object) -> list[str]:
    return [c.kind for c in diagnose(**kwargs)]  # type: ignore[arg-type]


def test_wrapper_prefix_from_ddp_and_compile() -> None:
    model = ["fc.weight", "fc.bias"]
    ckpt = ["module._orig_mod.fc.weight", "module._orig_mod.fc.bias"]
    (cause,) = diagnose(
        model_keys=model,
        checkpoint_keys=ckpt,
        missing={"fc.weight": W, "fc.bias": B},
        unexpected={ckpt[0]: W, ckpt[1]: B},
    )
    assert cause.kind == "wrapper_prefix"
    assert "'module._orig_mod.'" in cause.summary
    assert cause.fix.startswith(
        'statevault.load_into(model, source, strip_prefix="module._orig_mod.") (auto_fix=True'
    )
    assert cause.options == {"strip_prefix": "module._orig_mod."}


def test_larger_and_smaller_checkpoints() -> None:
    small = ["a.weight", "b.weight"]
    big = ["backbone.a.weight", "backbone.b.weight", "head.weight"]
    larger = diagnose(
        model_keys=small,
        checkpoint_keys=big,
        missing=dict.fromkeys(small, W),
        unexpected=dict.fromkeys(big, W),
    )
    assert larger[0].kind == "larger_checkpoint"
    assert larger[0].fix.startswith('statevault.load_into(model, source, prefix="backbone.")')
    assert larger[0].options == {"prefix": "backbone."}
    smaller = diagnose(
        model_keys=["blocks.3.a.weight", "blocks.3.b.weight", "head.weight"],
        checkpoint_keys=small,
        missing={"blocks.3.a.weight": W, "blocks.3.b.weight": W},
        unexpected=dict.fromkeys(small, W),
    )
    assert smaller[0].kind == "smaller_checkpoint"
    assert smaller[0].fix == "statevault.load_into(model.blocks[3], source)"
    assert smaller[0].submodule == "blocks[3]"


def test_rename_needs_equal_shapes_and_one_differing_name() -> None:
    same = diagnose(
        model_keys=["classifier.weight"],
        checkpoint_keys=["fc.weight"],
        missing={"classifier.weight": W},
        unexpected={"fc.weight": W},
    )
    assert same[0].fix == 'statevault.load_into(model, source, rename=[(r"^fc\\.", "classifier.")])'
    assert same[0].options == {"rename": [("^fc\\.", "classifier.")]}
    assert (
        _kinds(
            model_keys=["classifier.weight"],
            checkpoint_keys=["fc.weight"],
            missing={"classifier.weight": W},
            unexpected={"fc.weight": (5, 4)},
        )
        == []
    )


def test_shape_stories() -> None:
    mismatches = [
        ("proj.weight", (8, 4), (4, 8)),
        ("embed.weight", (50257, 16), (32000, 16)),
        ("conv.weight", (4, 4, 1, 1), (4, 4)),
        ("norm.weight", (3,), (2, 2)),
    ]
    causes = diagnose(
        model_keys=[], checkpoint_keys=[], missing={}, unexpected={}, mismatches=mismatches
    )
    assert [c.kind for c in causes] == ["transposed", "first_dim", "reshaped", "shape"]
    assert (
        "vocabulary size differs: 'embed' has 50257 in the checkpoint and 32000"
        in causes[1].summary
    )


def test_only_buffers_missing() -> None:
    kinds = _kinds(
        model_keys=["bn.weight", "bn.position_ids"],
        checkpoint_keys=["bn.weight"],
        missing={"bn.position_ids": (1, 8)},
        unexpected={},
        buffers={"bn.position_ids"},
    )
    assert kinds == ["missing_buffers"]


def test_many_unrelated_keys_give_no_false_rename() -> None:
    missing = {f"{i}.weight": W for i in range(200)}
    unexpected = {f"x{i}.weight": W for i in range(200)}
    assert "renamed" not in _kinds(
        model_keys=list(missing),
        checkpoint_keys=list(unexpected),
        missing=missing,
        unexpected=unexpected,
    )


def test_attribute_path() -> None:
    assert attribute_path("encoder.layers.3.attn.") == "encoder.layers[3].attn"
