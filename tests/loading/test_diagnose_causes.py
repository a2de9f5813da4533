"""Diagnosis asserted whole: for each situation, every cause (kind, summary, fix, printed
code, options, submodule), in order, including the thresholds each finder stands down at
(exactly half, 50 rename candidates, 5 renames or heads shown, 3 buffers named, half the model
a head) and how competing renames are ranked (synonyms, then pairs, then similarity).
"""

from __future__ import annotations

from typing import Any

import pytest

from statevault.loading.diagnose import diagnose
from statevault.loading.fixes import Call, EntryPoint

W = (4, 4)
B = (4,)
SCENARIOS: dict[str, dict[str, Any]] = {
    "model_wrapped_in_ddp_and_compile": dict(
        model_keys=["module._orig_mod.fc.weight"],
        checkpoint_keys=["fc.weight"],
        missing={"module._orig_mod.fc.weight": W},
        unexpected={"fc.weight": W},
    ),
    "same_wrapper_on_both_sides": dict(
        model_keys=["module.a.w", "module.b.w"],
        checkpoint_keys=["module.a.w", "module.x.w"],
        missing={"module.b.w": W},
        unexpected={"module.x.w": (3,)},
    ),
    "checkpointed_submodules": dict(
        model_keys=["a.w"],
        checkpoint_keys=["a._checkpoint_wrapped_module.w"],
        missing={"a.w": W},
        unexpected={"a._checkpoint_wrapped_module.w": W},
    ),
    "compiled_inside_ddp_checkpoint": dict(
        model_keys=["a.w"],
        checkpoint_keys=["module.x._orig_mod.a.w"],
        missing={"a.w": W},
        unexpected={"module.x._orig_mod.a.w": W},
    ),
    "larger_exactly_half": dict(
        model_keys=["a.w", "b.w"],
        checkpoint_keys=["bb.a.w", "x"],
        missing={"a.w": W, "b.w": W},
        unexpected={"bb.a.w": W, "x": W},
    ),
    "larger_under_half": dict(
        model_keys=["a.w", "b.w", "c.w"],
        checkpoint_keys=["bb.a.w", "x"],
        missing={"a.w": W, "b.w": W, "c.w": W},
        unexpected={"bb.a.w": W, "x": (9,)},
    ),
    "larger_all": dict(
        model_keys=["a.w", "b.w"],
        checkpoint_keys=["enc.a.w", "enc.b.w", "dec.a.w"],
        missing={"a.w": W, "b.w": W},
        unexpected={"enc.a.w": W, "enc.b.w": W, "dec.a.w": W},
    ),
    "smaller_exactly_half": dict(
        model_keys=["enc.a.w", "enc.b.w", "c.w"],
        checkpoint_keys=["a.w", "z.q"],
        missing={"enc.a.w": W, "enc.b.w": W, "c.w": W},
        unexpected={"a.w": W, "z.q": (7,)},
    ),
    "smaller_under_half": dict(
        model_keys=["enc.a.w", "c.w"],
        checkpoint_keys=["a.w", "z.q", "y.q"],
        missing={"enc.a.w": W, "c.w": W},
        unexpected={"a.w": W, "z.q": (7,), "y.q": (8,)},
    ),
    "five_renames": dict(
        model_keys=[f"m{i}.new{i}" for i in range(5)],
        checkpoint_keys=[f"m{i}.old{i}" for i in range(5)],
        missing={f"m{i}.new{i}": (i + 1,) for i in range(5)},
        unexpected={f"m{i}.old{i}": (i + 1,) for i in range(5)},
    ),
    "six_renames": dict(
        model_keys=[f"m{i}.new{i}" for i in range(6)],
        checkpoint_keys=[f"m{i}.old{i}" for i in range(6)],
        missing={f"m{i}.new{i}": (i + 1,) for i in range(6)},
        unexpected={f"m{i}.old{i}": (i + 1,) for i in range(6)},
    ),
    "renames_at_every_position": dict(
        model_keys=["x.weight.y", "bias.z", "p.kernel2", "weight.q", "r.weight.s"],
        checkpoint_keys=[],
        missing={
            "x.weight.y": W,
            "bias.z": B,
            "p.kernel2": (3,),
            "weight.q": (5,),
            "r.weight.s": (6,),
        },
        unexpected={
            "x.gamma.y": W,
            "beta.z": B,
            "p.kernel": (3,),
            "gamma.q": (5,),
            "r.gamma.s": (6,),
        },
    ),
    "synonyms_win_ties": dict(
        model_keys=["a.weight", "b.weight"],
        checkpoint_keys=[],
        missing={"a.weight": W, "b.weight": (2,)},
        unexpected={"a.gamma": W, "b.wieght": (2,)},
    ),
    "more_pairs_win": dict(
        model_keys=["a.x", "b.x", "c.y"],
        checkpoint_keys=[],
        missing={"a.x": W, "b.x": W, "c.y": W},
        unexpected={"a.q": W, "b.q": W, "c.q": W},
    ),
    "fifty_candidates_still_count": dict(
        model_keys=["m.weight"],
        checkpoint_keys=[],
        missing={"m.weight": (99,)},
        unexpected={**{f"u{i}.weight": (i,) for i in range(49)}, "n.weight": (99,)},
    ),
    "fifty_one_candidates_are_no_evidence": dict(
        model_keys=["m.weight"],
        checkpoint_keys=[],
        missing={"m.weight": (99,)},
        unexpected={**{f"u{i}.weight": (i,) for i in range(50)}, "n.weight": (99,)},
    ),
    "num_batches_tracked_only": dict(
        model_keys=["bn.num_batches_tracked", "bn2.num_batches_tracked", "bn.w"],
        checkpoint_keys=["bn.w"],
        missing={"bn.num_batches_tracked": (), "bn2.num_batches_tracked": ()},
        unexpected={},
        buffers={"bn.num_batches_tracked", "bn2.num_batches_tracked"},
    ),
    "buffers_only": dict(
        model_keys=["a.pos", "a.num_batches_tracked", "w"],
        checkpoint_keys=["w"],
        missing={"a.pos": (1,), "a.num_batches_tracked": ()},
        unexpected={},
        buffers={"a.pos", "a.num_batches_tracked"},
    ),
    "buffers_and_a_parameter": dict(
        model_keys=["a.pos", "w"],
        checkpoint_keys=[],
        missing={"a.pos": (1,), "w": (1,)},
        unexpected={},
        buffers={"a.pos"},
    ),
    "buffers_with_unexpected": dict(
        model_keys=["a.pos", "w"],
        checkpoint_keys=["w", "zz"],
        missing={"a.pos": (1,)},
        unexpected={"zz": (9, 9)},
        buffers={"a.pos"},
    ),
    "three_non_persistent": dict(
        model_keys=["e"],
        checkpoint_keys=["e", "p1", "p2", "p3", "q"],
        missing={},
        unexpected={"p1": (1,), "p2": (1,), "p3": (1,), "q": (2,)},
        non_persistent={"p1", "p2", "p3"},
    ),
    "four_non_persistent": dict(
        model_keys=["e"],
        checkpoint_keys=["e", "p1", "p2", "p3", "p4"],
        missing={},
        unexpected={f"p{i}": (1,) for i in range(1, 5)},
        non_persistent={"p1", "p2", "p3", "p4"},
    ),
    "new_head_half_the_model": dict(
        model_keys=["body.w", "body.b", "score.w", "score.b"],
        checkpoint_keys=["body.w", "body.b"],
        missing={"score.w": W, "score.b": B},
        unexpected={},
    ),
    "new_head_more_than_half": dict(
        model_keys=["body.w", "score.w", "score.b"],
        checkpoint_keys=["body.w"],
        missing={"score.w": W, "score.b": B},
        unexpected={},
    ),
    "new_heads_with_unused_checkpoint_heads": dict(
        model_keys=["enc.w", "enc.v", "enc.u", "enc.t", "qa_outputs.w", "Pooler.dense.w", "fc.w"],
        checkpoint_keys=["enc.w", "enc.v", "enc.u", "enc.t", "lm.w", "cls.w"],
        missing={"qa_outputs.w": W, "Pooler.dense.w": W, "fc.w": W},
        unexpected={"lm.w": (5,), "cls.w": (6,)},
    ),
    "top_level_missing_is_no_head": dict(
        model_keys=["a.w", "b.w", "c.w", "head"],
        checkpoint_keys=["a.w", "b.w", "c.w"],
        missing={"head": W},
        unexpected={},
    ),
    "part_of_a_head_is_no_head": dict(
        model_keys=["a.w", "b.w", "c.w", "head.w", "head.b"],
        checkpoint_keys=["a.w", "b.w", "c.w", "head.b"],
        missing={"head.w": W},
        unexpected={},
    ),
    "head_inside_a_numbered_block_is_no_head": dict(
        model_keys=["a.w", "b.w", "c.w", "layers.1.head.w"],
        checkpoint_keys=["a.w", "b.w", "c.w"],
        missing={"layers.1.head.w": W},
        unexpected={},
    ),
    "optimizer_state_from_a_file": dict(
        model_keys=["w"], checkpoint_keys=[], missing={"w": W}, unexpected={}, optimizer=True
    ),
    "optimizer_state_in_memory": dict(
        model_keys=["w"],
        checkpoint_keys=[],
        missing={"w": W},
        unexpected={},
        optimizer=True,
        call=Call(source="state"),
    ),
    "empty_selection_best_prefix": dict(
        model_keys=["a.w", "b.w"],
        checkpoint_keys=[],
        missing={"a.w": W, "b.w": W},
        unexpected={},
        prefix="nope.",
        ignored=["enc.a.w", "enc.b.w", "dec.x", "dec.a.w"],
    ),
    "empty_selection_no_match": dict(
        model_keys=["q"],
        checkpoint_keys=[],
        missing={"q": W},
        unexpected={},
        prefix="nope.",
        ignored=[f"t{i:02}.x" for i in range(12)],
    ),
    "prefix_selects_something": dict(
        model_keys=["q"],
        checkpoint_keys=["x"],
        missing={"q": W},
        unexpected={"x": (1,)},
        prefix="p.",
        ignored=["y.q"],
    ),
    "shapes_every_kind": dict(
        model_keys=[],
        checkpoint_keys=[],
        missing={},
        unexpected={},
        mismatches=[
            ("proj.weight", (8, 4), (4, 8)),
            ("h.0.attn.weight", (2, 3), (3, 2)),
            ("embed.weight", (50257, 16), (32000, 16)),
            ("lm_head.weight", (50257, 16), (32000, 16)),
            ("cls.weight", (10, 16), (2, 16)),
            ("cls.bias", (10,), (2,)),
            ("conv.weight", (4, 4, 1, 1), (4, 4)),
            ("norm.weight", (3,), (2, 2)),
            ("x", (1,), (1, 1, 2)),
            ("w2", (3, 3), (3, 3, 1)),
        ],
        stored={"proj.weight": "module.proj.weight"},
    ),
    "square_transposed_is_other": dict(
        model_keys=[],
        checkpoint_keys=[],
        missing={},
        unexpected={},
        mismatches=[("s", (2,), (3,)), ("t", (4, 4, 2), (2, 4, 4))],
    ),
    "shapes_in_a_build_call": dict(
        model_keys=[],
        checkpoint_keys=[],
        missing={},
        unexpected={},
        mismatches=[("p", (8, 4), (4, 8)), ("c", (4, 1), (1, 4, 1)), ("n", (3,), (4,))],
        call=Call(EntryPoint.BUILD_MODEL, "Net", '"x.st"'),
    ),
    "checkpoint_from_ddp_around_compile": dict(
        model_keys=["fc.weight", "fc.bias"],
        checkpoint_keys=["module._orig_mod.fc.weight", "module._orig_mod.fc.bias"],
        missing={"fc.weight": W, "fc.bias": B},
        unexpected={"module._orig_mod.fc.weight": W, "module._orig_mod.fc.bias": B},
    ),
    "model_wrapped_when_building": dict(
        model_keys=["module.fc.weight"],
        checkpoint_keys=["fc.weight"],
        missing={"module.fc.weight": W},
        unexpected={"fc.weight": W},
        call=Call(EntryPoint.BUILD_MODEL, "Net", '"x.st"'),
    ),
    "fsdp_submodules": dict(
        model_keys=["a.w"],
        checkpoint_keys=["a._fsdp_wrapped_module.w"],
        missing={"a.w": W},
        unexpected={"a._fsdp_wrapped_module.w": W},
    ),
    "model_has_the_inner_wrapper_too": dict(
        model_keys=["a._orig_mod.w", "b.w"],
        checkpoint_keys=["a._orig_mod.w", "c.w"],
        missing={"b.w": W},
        unexpected={"c.w": (3,)},
    ),
    "nested_num_batches_tracked": dict(
        model_keys=["enc.bn.num_batches_tracked", "enc.bn.w"],
        checkpoint_keys=["enc.bn.w"],
        missing={"enc.bn.num_batches_tracked": ()},
        unexpected={},
        buffers={"enc.bn.num_batches_tracked"},
    ),
    "six_new_heads_six_unused": dict(
        model_keys=[
            "body.w",
            "body.v",
            "body.u",
            "body.t",
            "body.s",
            "body.r",
            *[f"head{i}.w" for i in range(6)],
        ],
        checkpoint_keys=["body.w"],
        missing={f"head{i}.w": W for i in range(6)},
        unexpected={f"cls{i}.w": (9,) for i in range(6)},
    ),
    "crowded_first_name_still_lets_the_last_match": dict(
        model_keys=["m.weight"],
        checkpoint_keys=[],
        missing={"m.weight": (99,)},
        unexpected={**{f"u{i}.weight": (i,) for i in range(51)}, "m.kernel": (99,)},
    ),
    "rename_in_the_middle_only": dict(
        model_keys=["x.weight.y", "z.weight.q"],
        checkpoint_keys=[],
        missing={"x.weight.y": W, "z.weight.q": B},
        unexpected={"x.gamma.y": W, "z.gamma.q": B},
    ),
    "the_most_similar_name_wins": dict(
        model_keys=["a.weight"],
        checkpoint_keys=[],
        missing={"a.weight": W},
        unexpected={"a.zzzzzz": W, "a.wieght": W},
    ),
    "a_synonym_beats_a_similar_name": dict(
        model_keys=["a.weight"],
        checkpoint_keys=[],
        missing={"a.weight": W},
        unexpected={"a.wieght": W, "a.gamma": W},
    ),
    "a_checkpoint_key_is_renamed_once": dict(
        model_keys=["a.weight", "a.beta"],
        checkpoint_keys=[],
        missing={"a.weight": W, "a.beta": W},
        unexpected={"a.gamma": W},
    ),
    "a_rule_left_without_keys_does_not_end_the_search": dict(
        model_keys=["a.weight", "b.bias2"],
        checkpoint_keys=[],
        missing={"a.weight": W, "b.bias2": B},
        unexpected={"a.gamma": W, "a.wieght": W, "b.qqq": B},
    ),
    "optimizer_state_is_no_new_head": dict(
        model_keys=["body.w", "body.v", "score.w"],
        checkpoint_keys=["body.w", "body.v"],
        missing={"score.w": W},
        unexpected={},
        optimizer=True,
    ),
    "a_rename_is_no_new_head": dict(
        model_keys=["body.w", "body.v", "body.u", "score.w", "score.b"],
        checkpoint_keys=["body.w", "body.v", "body.u", "score.kernel"],
        missing={"score.w": W, "score.b": B},
        unexpected={"score.kernel": W},
    ),
    "first_dim_of_six_nested_modules": dict(
        model_keys=[],
        checkpoint_keys=[],
        missing={},
        unexpected={},
        mismatches=[(f"enc.out{i}.weight", (10, 4), (2, 4)) for i in range(6)],
    ),
}


EXPECTED: dict[str, list[tuple[str, str, str, str, dict[str, Any], str]]] = {
    "model_wrapped_in_ddp_and_compile": [
        (
            "model_wrapped",
            "every model key starts with 'module._orig_mod.': your model is wrapped in DataParallel/DistributedDataParallel and compiled with torch.compile, the checkpoint was saved from the plain model",
            "statevault.load_into(model.module._orig_mod, source) (auto_fix=True, the default, maps the names for you)",
            "statevault.load_into(model.module._orig_mod, source)",
            {},
            "module._orig_mod",
        ),
        (
            "smaller_checkpoint",
            "the checkpoint holds part of your model: all 1 unexpected checkpoint keys are your model's 'module._orig_mod.' sub-tree",
            "statevault.load_into(model.module._orig_mod, source)",
            "statevault.load_into(model.module._orig_mod, source)",
            {},
            "module._orig_mod",
        ),
    ],
    "same_wrapper_on_both_sides": [],
    "checkpointed_submodules": [
        (
            "wrapper_names",
            "checkpoint keys contain '_checkpoint_wrapped_module.': submodules were wrapped with checkpoint_wrapper (activation checkpointing) when it was saved",
            'statevault.load_into(model, source, rename=[(r"(^|\\.)_checkpoint_wrapped_module\\.", r"\\1")]) (auto_fix=True, the default, does this for you)',
            'statevault.load_into(model, source, rename=[(r"(^|\\.)_checkpoint_wrapped_module\\.", r"\\1")])',
            {"rename": [("(^|\\.)_checkpoint_wrapped_module\\.", "\\1")]},
            "",
        ),
    ],
    "compiled_inside_ddp_checkpoint": [
        (
            "wrapper_prefix",
            "every checkpoint key starts with 'module.': it was saved from a model wrapped in DataParallel/DistributedDataParallel",
            'statevault.load_into(model, source, strip_prefix="module.") (auto_fix=True, the default, does this for you; when saving, save model.module.state_dict() instead)',
            'statevault.load_into(model, source, strip_prefix="module.")',
            {"strip_prefix": "module."},
            "",
        ),
        (
            "wrapper_names",
            "checkpoint keys contain '_orig_mod.': submodules were compiled with torch.compile when it was saved",
            'statevault.load_into(model, source, rename=[(r"(^|\\.)_orig_mod\\.", r"\\1")]) (auto_fix=True, the default, does this for you)',
            'statevault.load_into(model, source, rename=[(r"(^|\\.)_orig_mod\\.", r"\\1")])',
            {"rename": [("(^|\\.)_orig_mod\\.", "\\1")]},
            "",
        ),
        (
            "larger_checkpoint",
            "the checkpoint holds a bigger model: all 1 missing model keys are in it under 'module.x._orig_mod.'",
            'statevault.load_into(model, source, prefix="module.x._orig_mod.") (loads just that part; the other checkpoint keys are ignored and listed in the report)',
            'statevault.load_into(model, source, prefix="module.x._orig_mod.")',
            {"prefix": "module.x._orig_mod."},
            "",
        ),
    ],
    "larger_exactly_half": [
        (
            "larger_checkpoint",
            "the checkpoint holds a bigger model: 1 of 2 missing model keys are in it under 'bb.'",
            'statevault.load_into(model, source, prefix="bb.") (loads just that part; the other checkpoint keys are ignored and listed in the report)',
            'statevault.load_into(model, source, prefix="bb.")',
            {"prefix": "bb."},
            "",
        ),
    ],
    "larger_under_half": [],
    "larger_all": [
        (
            "larger_checkpoint",
            "the checkpoint holds a bigger model: all 2 missing model keys are in it under 'enc.'",
            'statevault.load_into(model, source, prefix="enc.") (loads just that part; the other checkpoint keys are ignored and listed in the report)',
            'statevault.load_into(model, source, prefix="enc.")',
            {"prefix": "enc."},
            "",
        ),
    ],
    "smaller_exactly_half": [
        (
            "smaller_checkpoint",
            "the checkpoint holds part of your model: 1 of 2 unexpected checkpoint keys are your model's 'enc.' sub-tree",
            "statevault.load_into(model.enc, source)",
            "statevault.load_into(model.enc, source)",
            {},
            "enc",
        ),
        (
            "renamed",
            "renamed layer(s): 1 missing key(s) match unexpected checkpoint keys with the same shape under another name ('a' -> 'c'; e.g. checkpoint 'a.w' is model 'c.w')",
            'statevault.load_into(model, source, rename=[(r"^a\\.", "c.")])',
            'statevault.load_into(model, source, rename=[(r"^a\\.", "c.")])',
            {"rename": [("^a\\.", "c.")]},
            "",
        ),
    ],
    "smaller_under_half": [
        (
            "renamed",
            "renamed layer(s): 1 missing key(s) match unexpected checkpoint keys with the same shape under another name ('a' -> 'c'; e.g. checkpoint 'a.w' is model 'c.w')",
            'statevault.load_into(model, source, rename=[(r"^a\\.", "c.")])',
            'statevault.load_into(model, source, rename=[(r"^a\\.", "c.")])',
            {"rename": [("^a\\.", "c.")]},
            "",
        ),
    ],
    "five_renames": [
        (
            "renamed",
            "renamed layer(s): 5 missing key(s) match unexpected checkpoint keys with the same shape under another name ('old0' -> 'new0', 'old1' -> 'new1', 'old2' -> 'new2', 'old3' -> 'new3', 'old4' -> 'new4'; e.g. checkpoint 'm0.old0' is model 'm0.new0')",
            'statevault.load_into(model, source, rename=[(r"\\.old0$", ".new0"), (r"\\.old1$", ".new1"), (r"\\.old2$", ".new2"), (r"\\.old3$", ".new3"), (r"\\.old4$", ".new4")])',
            'statevault.load_into(model, source, rename=[(r"\\.old0$", ".new0"), (r"\\.old1$", ".new1"), (r"\\.old2$", ".new2"), (r"\\.old3$", ".new3"), (r"\\.old4$", ".new4")])',
            {
                "rename": [
                    ("\\.old0$", ".new0"),
                    ("\\.old1$", ".new1"),
                    ("\\.old2$", ".new2"),
                    ("\\.old3$", ".new3"),
                    ("\\.old4$", ".new4"),
                ]
            },
            "",
        ),
    ],
    "six_renames": [
        (
            "renamed",
            "renamed layer(s): 6 missing key(s) match unexpected checkpoint keys with the same shape under another name ('old0' -> 'new0', 'old1' -> 'new1', 'old2' -> 'new2', 'old3' -> 'new3', 'old4' -> 'new4' and 1 more; e.g. checkpoint 'm0.old0' is model 'm0.new0')",
            'statevault.load_into(model, source, rename=[(r"\\.old0$", ".new0"), (r"\\.old1$", ".new1"), (r"\\.old2$", ".new2"), (r"\\.old3$", ".new3"), (r"\\.old4$", ".new4")])',
            'statevault.load_into(model, source, rename=[(r"\\.old0$", ".new0"), (r"\\.old1$", ".new1"), (r"\\.old2$", ".new2"), (r"\\.old3$", ".new3"), (r"\\.old4$", ".new4")])',
            {
                "rename": [
                    ("\\.old0$", ".new0"),
                    ("\\.old1$", ".new1"),
                    ("\\.old2$", ".new2"),
                    ("\\.old3$", ".new3"),
                    ("\\.old4$", ".new4"),
                ]
            },
            "",
        ),
    ],
    "renames_at_every_position": [
        (
            "renamed",
            "renamed layer(s): 5 missing key(s) match unexpected checkpoint keys with the same shape under another name ('gamma' -> 'weight', 'beta' -> 'bias', 'kernel' -> 'kernel2'; e.g. checkpoint 'x.gamma.y' is model 'x.weight.y')",
            'statevault.load_into(model, source, rename=[(r"(^|\\.)gamma(\\.|$)", r"\\1weight\\2"), (r"^beta\\.", "bias."), (r"\\.kernel$", ".kernel2")])',
            'statevault.load_into(model, source, rename=[(r"(^|\\.)gamma(\\.|$)", r"\\1weight\\2"), (r"^beta\\.", "bias."), (r"\\.kernel$", ".kernel2")])',
            {
                "rename": [
                    ("(^|\\.)gamma(\\.|$)", "\\1weight\\2"),
                    ("^beta\\.", "bias."),
                    ("\\.kernel$", ".kernel2"),
                ]
            },
            "",
        ),
    ],
    "synonyms_win_ties": [
        (
            "renamed",
            "renamed layer(s): 2 missing key(s) match unexpected checkpoint keys with the same shape under another name ('gamma' -> 'weight', 'wieght' -> 'weight'; e.g. checkpoint 'a.gamma' is model 'a.weight')",
            'statevault.load_into(model, source, rename=[(r"\\.gamma$", ".weight"), (r"\\.wieght$", ".weight")])',
            'statevault.load_into(model, source, rename=[(r"\\.gamma$", ".weight"), (r"\\.wieght$", ".weight")])',
            {"rename": [("\\.gamma$", ".weight"), ("\\.wieght$", ".weight")]},
            "",
        ),
    ],
    "more_pairs_win": [
        (
            "renamed",
            "renamed layer(s): 3 missing key(s) match unexpected checkpoint keys with the same shape under another name ('q' -> 'x', 'q' -> 'y'; e.g. checkpoint 'a.q' is model 'a.x')",
            'statevault.load_into(model, source, rename=[(r"\\.q$", ".x"), (r"\\.q$", ".y")])',
            'statevault.load_into(model, source, rename=[(r"\\.q$", ".x"), (r"\\.q$", ".y")])',
            {"rename": [("\\.q$", ".x"), ("\\.q$", ".y")]},
            "",
        ),
    ],
    "fifty_candidates_still_count": [
        (
            "renamed",
            "renamed layer(s): 1 missing key(s) match unexpected checkpoint keys with the same shape under another name ('n' -> 'm'; e.g. checkpoint 'n.weight' is model 'm.weight')",
            'statevault.load_into(model, source, rename=[(r"^n\\.", "m.")])',
            'statevault.load_into(model, source, rename=[(r"^n\\.", "m.")])',
            {"rename": [("^n\\.", "m.")]},
            "",
        ),
    ],
    "fifty_one_candidates_are_no_evidence": [],
    "num_batches_tracked_only": [
        (
            "missing_buffers",
            "only BatchNorm 'num_batches_tracked' counters are missing (2): the checkpoint was saved by an old PyTorch or a converter that drops them; they are only used when BatchNorm has momentum=None",
            "statevault.load_into(model, source, strict=False) (every other tensor loads and the counters keep their current values)",
            "statevault.load_into(model, source, strict=False)",
            {"strict": False},
            "",
        ),
    ],
    "buffers_only": [
        (
            "missing_buffers",
            "only buffers are missing (2, e.g. 'a.pos'): they were probably added to the model, or made persistent, after the checkpoint was saved",
            "statevault.load_into(model, source, strict=False) (every other tensor loads and these keep their current values)",
            "statevault.load_into(model, source, strict=False)",
            {"strict": False},
            "",
        ),
    ],
    "buffers_and_a_parameter": [],
    "buffers_with_unexpected": [],
    "three_non_persistent": [
        (
            "non_persistent_buffer",
            "3 unexpected checkpoint key(s) are non-persistent buffers of the model ('p1', 'p2', 'p3'): the model computes them in __init__ and does not save them; an older version of it did (transformers ignores such keys)",
            "statevault.load_into(model, source, strict=False) (the model keeps its computed values and the report lists the keys as unexpected)",
            "statevault.load_into(model, source, strict=False)",
            {"strict": False},
            "",
        ),
    ],
    "four_non_persistent": [
        (
            "non_persistent_buffer",
            "4 unexpected checkpoint key(s) are non-persistent buffers of the model ('p1', 'p2', 'p3' ...): the model computes them in __init__ and does not save them; an older version of it did (transformers ignores such keys)",
            "statevault.load_into(model, source, strict=False) (the model keeps its computed values and the report lists the keys as unexpected)",
            "statevault.load_into(model, source, strict=False)",
            {"strict": False},
            "",
        ),
    ],
    "new_head_half_the_model": [
        (
            "new_head",
            "new task head: the model's 'score' (2 key(s)) is not in the checkpoint, which was saved for another task (e.g. pre-training)",
            "statevault.load_into(model, source, strict=False) (everything else loads; the head's tensors keep their current values (a fresh model's initialisation) and the report lists them as missing)",
            "statevault.load_into(model, source, strict=False)",
            {"strict": False},
            "",
        ),
    ],
    "new_head_more_than_half": [],
    "new_heads_with_unused_checkpoint_heads": [
        (
            "new_head",
            "new task head: the model's 'Pooler.dense', 'fc', 'qa_outputs' (3 key(s)) is not in the checkpoint, which was saved for another task (e.g. pre-training); the checkpoint's own head (cls, lm) is not used",
            "statevault.load_into(model, source, strict=False) (everything else loads; the head's tensors keep their current values (a fresh model's initialisation) and the report lists them as missing)",
            "statevault.load_into(model, source, strict=False)",
            {"strict": False},
            "",
        ),
    ],
    "top_level_missing_is_no_head": [],
    "part_of_a_head_is_no_head": [],
    "head_inside_a_numbered_block_is_no_head": [],
    "optimizer_state_from_a_file": [
        (
            "optimizer_state",
            "the checkpoint holds an optimizer's state_dict (its 'state' and 'param_groups'), not a model's",
            "load it into the optimizer: optimizer.load_state_dict(statevault.load(source)); load the model from the checkpoint that holds model.state_dict()",
            "optimizer.load_state_dict(statevault.load(source))",
            {},
            "",
        ),
    ],
    "optimizer_state_in_memory": [
        (
            "optimizer_state",
            "the checkpoint holds an optimizer's state_dict (its 'state' and 'param_groups'), not a model's",
            "load it into the optimizer: optimizer.load_state_dict(state); load the model from the checkpoint that holds model.state_dict()",
            "optimizer.load_state_dict(state)",
            {},
            "",
        ),
    ],
    "empty_selection_best_prefix": [
        (
            "empty_selection",
            "no checkpoint key starts with prefix 'nope.'",
            'statevault.load_into(model, source, prefix="enc.") (the checkpoint\'s top-level prefixes are "dec.", "enc.")',
            'statevault.load_into(model, source, prefix="enc.")',
            {"prefix": "enc."},
            "",
        ),
    ],
    "empty_selection_no_match": [
        (
            "empty_selection",
            "no checkpoint key starts with prefix 'nope.'",
            'statevault.load_into(model, source, prefix="t00.") (the checkpoint\'s top-level prefixes are "t00.", "t01.", "t02.", "t03.", "t04.", "t05.", "t06.", "t07.", "t08.", "t09.")',
            'statevault.load_into(model, source, prefix="t00.")',
            {"prefix": "t00."},
            "",
        ),
    ],
    "prefix_selects_something": [],
    "shapes_every_kind": [
        (
            "transposed",
            "2 weight(s) are transposed: e.g. 'proj.weight' is [8, 4] in the checkpoint and [4, 8] in the model (saved from a layer that stores in x out, such as GPT-2's Conv1D, or converted from another framework)",
            'transpose them and load the dict: state = statevault.load(source); state.update({"module.proj.weight": state["module.proj.weight"].t().contiguous(), "h.0.attn.weight": state["h.0.attn.weight"].t().contiguous()}); statevault.load_into(model, state)',
            'state = statevault.load(source); state.update({"module.proj.weight": state["module.proj.weight"].t().contiguous(), "h.0.attn.weight": state["h.0.attn.weight"].t().contiguous()}); statevault.load_into(model, state)',
            {},
            "",
        ),
        (
            "first_dim",
            "the vocabulary size differs: 'embed', 'lm_head' has 50257 in the checkpoint and 32000 in the model (first dimension of 2 tensor(s))",
            "statevault.load_into(model, source, strict=False) (to fine-tune with a new vocabulary size: everything else loads and these keep their current values (a fresh model's initialisation); the report lists them as skipped)",
            "statevault.load_into(model, source, strict=False)",
            {"strict": False},
            "",
        ),
        (
            "first_dim",
            "the number of classes / output size differs: 'cls' has 10 in the checkpoint and 2 in the model (first dimension of 2 tensor(s))",
            "statevault.load_into(model, source, strict=False) (to fine-tune with a new number of classes: everything else loads and these keep their current values (a fresh model's initialisation); the report lists them as skipped)",
            "statevault.load_into(model, source, strict=False)",
            {"strict": False},
            "",
        ),
        (
            "reshaped",
            "2 tensor(s) hold the same number of elements in another shape (e.g. 'conv.weight'): a layer type changed, such as Conv 1x1 vs Linear",
            'reshape them and load the dict: state = statevault.load(source); state.update({"conv.weight": state["conv.weight"].reshape((4, 4)), "w2": state["w2"].reshape((3, 3, 1))}); statevault.load_into(model, state)',
            'state = statevault.load(source); state.update({"conv.weight": state["conv.weight"].reshape((4, 4)), "w2": state["w2"].reshape((3, 3, 1))}); statevault.load_into(model, state)',
            {},
            "",
        ),
        (
            "shape",
            "2 tensor(s) have different sizes (e.g. 'norm.weight'): the model was built with a different configuration than the checkpoint",
            "statevault.load_into(model, source, strict=False) (skips them and they keep their current values (a fresh model's initialisation); or build the model with the checkpoint's configuration)",
            "statevault.load_into(model, source, strict=False)",
            {"strict": False},
            "",
        ),
    ],
    "square_transposed_is_other": [
        (
            "first_dim",
            "the number of classes / output size differs: 's' has 2 in the checkpoint and 3 in the model (first dimension of 1 tensor(s))",
            "statevault.load_into(model, source, strict=False) (to fine-tune with a new number of classes: everything else loads and these keep their current values (a fresh model's initialisation); the report lists them as skipped)",
            "statevault.load_into(model, source, strict=False)",
            {"strict": False},
            "",
        ),
        (
            "reshaped",
            "1 tensor(s) hold the same number of elements in another shape (e.g. 't'): a layer type changed, such as Conv 1x1 vs Linear",
            'reshape them and load the dict: state = statevault.load(source); state.update({"t": state["t"].reshape((2, 4, 4))}); statevault.load_into(model, state)',
            'state = statevault.load(source); state.update({"t": state["t"].reshape((2, 4, 4))}); statevault.load_into(model, state)',
            {},
            "",
        ),
    ],
    "shapes_in_a_build_call": [
        (
            "transposed",
            "1 weight(s) are transposed: e.g. 'p' is [8, 4] in the checkpoint and [4, 8] in the model (saved from a layer that stores in x out, such as GPT-2's Conv1D, or converted from another framework)",
            'transpose them and load the dict: state = statevault.load("x.st"); state.update({"p": state["p"].t().contiguous()}); statevault.build_model(Net, state)',
            'state = statevault.load("x.st"); state.update({"p": state["p"].t().contiguous()}); statevault.build_model(Net, state)',
            {},
            "",
        ),
        (
            "first_dim",
            "the number of classes / output size differs: 'n' has 3 in the checkpoint and 4 in the model (first dimension of 1 tensor(s))",
            'statevault.build_model(Net, "x.st", strict=False) (to fine-tune with a new number of classes: everything else loads and these get the module\'s own initialisation (as the constructor would give them); the report lists them as skipped)',
            'statevault.build_model(Net, "x.st", strict=False)',
            {"strict": False},
            "",
        ),
        (
            "reshaped",
            "1 tensor(s) hold the same number of elements in another shape (e.g. 'c'): a layer type changed, such as Conv 1x1 vs Linear",
            'reshape them and load the dict: state = statevault.load("x.st"); state.update({"c": state["c"].reshape((1, 4, 1))}); statevault.build_model(Net, state)',
            'state = statevault.load("x.st"); state.update({"c": state["c"].reshape((1, 4, 1))}); statevault.build_model(Net, state)',
            {},
            "",
        ),
    ],
    "checkpoint_from_ddp_around_compile": [
        (
            "wrapper_prefix",
            "every checkpoint key starts with 'module._orig_mod.': it was saved from a model wrapped in DataParallel/DistributedDataParallel and compiled with torch.compile",
            'statevault.load_into(model, source, strip_prefix="module._orig_mod.") (auto_fix=True, the default, does this for you; when saving, save model.module._orig_mod.state_dict() instead)',
            'statevault.load_into(model, source, strip_prefix="module._orig_mod.")',
            {"strip_prefix": "module._orig_mod."},
            "",
        ),
    ],
    "model_wrapped_when_building": [
        (
            "model_wrapped",
            "every model key starts with 'module.': your model is wrapped in DataParallel/DistributedDataParallel, the checkpoint was saved from the plain model",
            'statevault.build_model(Net, "x.st", rename=[("^", "module.")]) (auto_fix=True, the default, maps the names for you)',
            'statevault.build_model(Net, "x.st", rename=[("^", "module.")])',
            {"rename": [("^", "module.")]},
            "",
        ),
        (
            "smaller_checkpoint",
            "the checkpoint holds part of your model: all 1 unexpected checkpoint keys are your model's 'module.' sub-tree",
            'statevault.build_model(Net, "x.st", rename=[("^", "module.")], strict=False) (the checkpoint\'s keys go under that sub-tree; the rest is not in it and its tensors get the module\'s own initialisation (as the constructor would give them))',
            'statevault.build_model(Net, "x.st", rename=[("^", "module.")], strict=False)',
            {"rename": [("^", "module.")], "strict": False},
            "",
        ),
    ],
    "fsdp_submodules": [
        (
            "wrapper_names",
            "checkpoint keys contain '_fsdp_wrapped_module.': submodules were wrapped in FullyShardedDataParallel (FSDP) when it was saved",
            'statevault.load_into(model, source, rename=[(r"(^|\\.)_fsdp_wrapped_module\\.", r"\\1")]) (auto_fix=True, the default, does this for you)',
            'statevault.load_into(model, source, rename=[(r"(^|\\.)_fsdp_wrapped_module\\.", r"\\1")])',
            {"rename": [("(^|\\.)_fsdp_wrapped_module\\.", "\\1")]},
            "",
        ),
    ],
    "model_has_the_inner_wrapper_too": [],
    "nested_num_batches_tracked": [
        (
            "missing_buffers",
            "only BatchNorm 'num_batches_tracked' counters are missing (1): the checkpoint was saved by an old PyTorch or a converter that drops them; they are only used when BatchNorm has momentum=None",
            "statevault.load_into(model, source, strict=False) (every other tensor loads and the counters keep their current values)",
            "statevault.load_into(model, source, strict=False)",
            {"strict": False},
            "",
        ),
    ],
    "six_new_heads_six_unused": [
        (
            "new_head",
            "new task head: the model's 'head0', 'head1', 'head2', 'head3', 'head4' (6 key(s)) is not in the checkpoint, which was saved for another task (e.g. pre-training); the checkpoint's own head (cls0, cls1, cls2, cls3, cls4) is not used",
            "statevault.load_into(model, source, strict=False) (everything else loads; the head's tensors keep their current values (a fresh model's initialisation) and the report lists them as missing)",
            "statevault.load_into(model, source, strict=False)",
            {"strict": False},
            "",
        ),
    ],
    "crowded_first_name_still_lets_the_last_match": [
        (
            "renamed",
            "renamed layer(s): 1 missing key(s) match unexpected checkpoint keys with the same shape under another name ('kernel' -> 'weight'; e.g. checkpoint 'm.kernel' is model 'm.weight')",
            'statevault.load_into(model, source, rename=[(r"\\.kernel$", ".weight")])',
            'statevault.load_into(model, source, rename=[(r"\\.kernel$", ".weight")])',
            {"rename": [("\\.kernel$", ".weight")]},
            "",
        ),
    ],
    "rename_in_the_middle_only": [
        (
            "renamed",
            "renamed layer(s): 2 missing key(s) match unexpected checkpoint keys with the same shape under another name ('gamma' -> 'weight'; e.g. checkpoint 'x.gamma.y' is model 'x.weight.y')",
            'statevault.load_into(model, source, rename=[(r"\\.gamma\\.", ".weight.")])',
            'statevault.load_into(model, source, rename=[(r"\\.gamma\\.", ".weight.")])',
            {"rename": [("\\.gamma\\.", ".weight.")]},
            "",
        ),
    ],
    "the_most_similar_name_wins": [
        (
            "renamed",
            "renamed layer(s): 1 missing key(s) match unexpected checkpoint keys with the same shape under another name ('wieght' -> 'weight'; e.g. checkpoint 'a.wieght' is model 'a.weight')",
            'statevault.load_into(model, source, rename=[(r"\\.wieght$", ".weight")])',
            'statevault.load_into(model, source, rename=[(r"\\.wieght$", ".weight")])',
            {"rename": [("\\.wieght$", ".weight")]},
            "",
        ),
    ],
    "a_synonym_beats_a_similar_name": [
        (
            "renamed",
            "renamed layer(s): 1 missing key(s) match unexpected checkpoint keys with the same shape under another name ('gamma' -> 'weight'; e.g. checkpoint 'a.gamma' is model 'a.weight')",
            'statevault.load_into(model, source, rename=[(r"\\.gamma$", ".weight")])',
            'statevault.load_into(model, source, rename=[(r"\\.gamma$", ".weight")])',
            {"rename": [("\\.gamma$", ".weight")]},
            "",
        ),
    ],
    "a_checkpoint_key_is_renamed_once": [
        (
            "renamed",
            "renamed layer(s): 1 missing key(s) match unexpected checkpoint keys with the same shape under another name ('gamma' -> 'weight'; e.g. checkpoint 'a.gamma' is model 'a.weight')",
            'statevault.load_into(model, source, rename=[(r"\\.gamma$", ".weight")])',
            'statevault.load_into(model, source, rename=[(r"\\.gamma$", ".weight")])',
            {"rename": [("\\.gamma$", ".weight")]},
            "",
        ),
    ],
    "a_rule_left_without_keys_does_not_end_the_search": [
        (
            "renamed",
            "renamed layer(s): 2 missing key(s) match unexpected checkpoint keys with the same shape under another name ('gamma' -> 'weight', 'qqq' -> 'bias2'; e.g. checkpoint 'a.gamma' is model 'a.weight')",
            'statevault.load_into(model, source, rename=[(r"\\.gamma$", ".weight"), (r"\\.qqq$", ".bias2")])',
            'statevault.load_into(model, source, rename=[(r"\\.gamma$", ".weight"), (r"\\.qqq$", ".bias2")])',
            {"rename": [("\\.gamma$", ".weight"), ("\\.qqq$", ".bias2")]},
            "",
        ),
    ],
    "optimizer_state_is_no_new_head": [
        (
            "optimizer_state",
            "the checkpoint holds an optimizer's state_dict (its 'state' and 'param_groups'), not a model's",
            "load it into the optimizer: optimizer.load_state_dict(statevault.load(source)); load the model from the checkpoint that holds model.state_dict()",
            "optimizer.load_state_dict(statevault.load(source))",
            {},
            "",
        ),
    ],
    "a_rename_is_no_new_head": [
        (
            "renamed",
            "renamed layer(s): 1 missing key(s) match unexpected checkpoint keys with the same shape under another name ('kernel' -> 'w'; e.g. checkpoint 'score.kernel' is model 'score.w')",
            'statevault.load_into(model, source, rename=[(r"\\.kernel$", ".w")])',
            'statevault.load_into(model, source, rename=[(r"\\.kernel$", ".w")])',
            {"rename": [("\\.kernel$", ".w")]},
            "",
        ),
    ],
    "first_dim_of_six_nested_modules": [
        (
            "first_dim",
            "the number of classes / output size differs: 'enc.out0', 'enc.out1', 'enc.out2', 'enc.out3', 'enc.out4' has 10 in the checkpoint and 2 in the model (first dimension of 6 tensor(s))",
            "statevault.load_into(model, source, strict=False) (to fine-tune with a new number of classes: everything else loads and these keep their current values (a fresh model's initialisation); the report lists them as skipped)",
            "statevault.load_into(model, source, strict=False)",
            {"strict": False},
            "",
        ),
    ],
}


@pytest.mark.parametrize("situation", list(SCENARIOS))
def test_every_cause_is_said_whole(situation: str) -> None:
    found = [
        (c.kind.value, c.summary, c.fix, c.code, dict(c.options), c.submodule)
        for c in diagnose(**SCENARIOS[situation])
    ]
    assert found == EXPECTED[situation]
