"""Cause detection on plain key lists and shapes: no torch, no disk."""

from __future__ import annotations

from statevault.loading.diagnose import diagnose
from statevault.loading.fixes import Call, EntryPoint, attribute_path
from statevault.reports.load_entries import Cause

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


def test_new_head_only_for_whole_head_modules_outside_numbered_blocks() -> None:
    body = [f"layers.{i}.mlp.fc1.weight" for i in range(4)]
    model = [*body, "classifier.weight", "classifier.bias"]
    head = diagnose(
        model_keys=model,
        checkpoint_keys=[*body, "cls.predictions.weight"],
        missing={"classifier.weight": W, "classifier.bias": B},
        unexpected={"cls.predictions.weight": W},
    )
    assert [c.kind for c in head] == ["new_head"]
    assert head[0].options == {"strict": False}
    assert "'classifier'" in head[0].summary and "(cls)" in head[0].summary
    block = diagnose(  # a whole MLP layer missing inside a block is not a new head
        model_keys=model,
        checkpoint_keys=[*body[1:], "classifier.weight", "classifier.bias"],
        missing={body[0]: W},
        unexpected={},
    )
    assert "new_head" not in [c.kind for c in block]


def test_non_persistent_buffers_and_optimizer_state_are_named() -> None:
    (buffer,) = diagnose(
        model_keys=["embeddings.weight"],
        checkpoint_keys=["embeddings.weight", "embeddings.position_ids"],
        missing={},
        unexpected={"embeddings.position_ids": (1, 16)},
        non_persistent={"embeddings.position_ids"},
    )
    assert buffer.kind == "non_persistent_buffer" and buffer.options == {"strict": False}
    causes = diagnose(
        model_keys=["weight", "bias"],
        checkpoint_keys=[],
        missing={"weight": W, "bias": B},
        unexpected={},
        optimizer=True,
    )
    assert causes[0].kind == "optimizer_state"
    assert causes[0].code == "optimizer.load_state_dict(statevault.load(source))"


def test_fixes_are_printed_for_the_entry_point_in_use() -> None:
    def smaller(call: Call) -> Cause:
        return diagnose(
            model_keys=["backbone.a.weight", "head.weight"],
            checkpoint_keys=["a.weight"],
            missing={"backbone.a.weight": W, "head.weight": W},
            unexpected={"a.weight": W},
            call=call,
        )[0]

    assert smaller(Call(EntryPoint.LOAD_INTO, "model", '"x.st"')).code == (
        'statevault.load_into(model.backbone, "x.st")'
    )
    built = smaller(Call(EntryPoint.BUILD_MODEL, "Net", '"x.st"', (("args", "(3,)"),)))
    assert built.code == (
        'statevault.build_model(Net, "x.st", args=(3,), rename=[("^", "backbone.")], strict=False)'
    )
    assert (
        smaller(Call(EntryPoint.CHECK, "model", "state")).code
        == "statevault.check(model.backbone, state)"
    )
