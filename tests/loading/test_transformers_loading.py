"""Loading into real transformers models (tiny configs built here, nothing downloaded).

The fine-tune-with-a-new-head path, old checkpoints with a non-persistent buffer, a
pre-training checkpoint into a classifier, tied GPT-2 heads, and models accelerate builds on
the meta device: each loads right, or fails with a fix that, applied, loads right.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from accelerate import init_empty_weights
from torch import nn
from transformers import (
    BertConfig,
    BertForPreTraining,
    BertForSequenceClassification,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
)

import statevault
from helpers.fixes import printed_fix, run_fix
from helpers.samples import poison_freed_memory
from statevault import MetaDeviceError, StateDictMismatchError, UnsupportedObjectError

TINY = {
    "vocab_size": 50,
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 37,
    "max_position_embeddings": 16,
    "initializer_range": 0.5,  # far from nn.Linear's own U(+-1/sqrt(32)): tells the two apart
}


def bert(cls: Any, seed: int, **config: Any) -> Any:
    torch.manual_seed(seed)
    return cls(BertConfig(**TINY, **config))


def test_new_classification_head_is_initialised_by_the_models_init_weights(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = bert(BertForSequenceClassification, 1, num_labels=3)
    path = tmp_path / "bert3.safetensors"
    statevault.save(source, path)
    with pytest.raises(StateDictMismatchError) as caught:
        statevault.build_model(
            BertForSequenceClassification, path, args=(BertConfig(**TINY, num_labels=5),)
        )
    cause = caught.value.report.causes[0]
    assert cause.kind == "first_dim" and cause.options == {"strict": False}
    assert cause.code.startswith("statevault.build_model(BertForSequenceClassification, ")
    assert "args=args" in cause.code  # a config object has no literal form
    poison_freed_memory([5 * 32, 5])
    with caplog.at_level(logging.WARNING, logger="statevault"):
        model = run_fix(
            cause.code,
            {
                "statevault": statevault,
                "BertForSequenceClassification": BertForSequenceClassification,
                "args": (BertConfig(**TINY, num_labels=5),),
            },
        )
    weight, bias = model.classifier.weight, model.classifier.bias
    assert torch.isfinite(weight).all() and torch.equal(bias, torch.zeros(5))  # HF: bias zeros
    assert 0.3 < float(weight.detach().std()) < 0.7  # HF: normal(0, initializer_range=0.5)
    assert (
        "initialised by reset_parameters() then BertForSequenceClassification._init_weights(): "
        in caplog.text
    )
    for key, value in source.state_dict().items():
        if not key.startswith("classifier."):
            assert torch.equal(model.state_dict()[key], value), key

    # the same tensors after load_into(strict=False) into a model built normally
    fresh = bert(BertForSequenceClassification, 2, num_labels=5)
    report = statevault.load_into(fresh, path, strict=False)
    assert report.skipped == ("classifier.weight", "classifier.bias")
    assert torch.equal(fresh.classifier.bias, torch.zeros(5))
    assert 0.3 < float(fresh.classifier.weight.detach().std()) < 0.7


def test_pretraining_checkpoint_into_a_classifier_names_the_new_head(tmp_path: Path) -> None:
    source = bert(BertForPreTraining, 1)
    path = tmp_path / "pretrained.safetensors"
    statevault.save(source, path)
    model = bert(BertForSequenceClassification, 2, num_labels=2)
    head = model.classifier.weight.detach().clone()
    with pytest.raises(StateDictMismatchError) as caught:
        statevault.load_into(model, path)
    cause = caught.value.report.causes[0]
    assert cause.kind == "new_head"
    assert "'classifier'" in cause.summary and "(cls)" in cause.summary
    report = run_fix(cause.code, {"statevault": statevault, "model": model})
    assert report.missing_keys == ["classifier.weight", "classifier.bias"]
    assert torch.equal(model.classifier.weight, head)  # keeps its values
    assert torch.equal(model.bert.pooler.dense.weight, source.bert.pooler.dense.weight)

    with pytest.raises(StateDictMismatchError) as caught:
        statevault.build_model(
            BertForSequenceClassification, path, args=(BertConfig(**TINY, num_labels=2),)
        )
    code = caught.value.report.causes[0].code
    built = run_fix(
        code,
        {
            "statevault": statevault,
            "BertForSequenceClassification": BertForSequenceClassification,
            "args": (BertConfig(**TINY, num_labels=2),),
        },
    )
    assert torch.equal(built.classifier.bias, torch.zeros(2))
    assert torch.equal(
        built.bert.encoder.layer[0].output.dense.weight,
        source.bert.encoder.layer[0].output.dense.weight,
    )


def test_old_checkpoint_with_position_ids_names_the_non_persistent_buffer(
    tmp_path: Path,
) -> None:
    source = bert(BertModel, 1)
    assert "embeddings.position_ids" not in source.state_dict()  # non-persistent today
    state = dict(source.state_dict())
    state["embeddings.position_ids"] = torch.arange(16).expand(1, -1) + 100  # as old ones saved
    path = tmp_path / "old.safetensors"
    statevault.save(state, path)
    model = bert(BertModel, 2)
    with pytest.raises(StateDictMismatchError) as caught:
        statevault.load_into(model, path)
    cause = caught.value.report.causes[0]
    assert cause.kind == "non_persistent_buffer"
    assert "'embeddings.position_ids'" in cause.summary and "non-persistent" in cause.summary
    report = run_fix(cause.code, {"statevault": statevault, "model": model})
    assert report.unexpected_keys == ["embeddings.position_ids"] and not report.missing_keys
    assert torch.equal(model.embeddings.position_ids, torch.arange(16).expand(1, -1))
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_optimizer_state_dict_into_a_model_says_so_and_the_fix_loads_it(tmp_path: Path) -> None:
    model = nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    path = tmp_path / "optimizer.safetensors"
    statevault.save(optimizer.state_dict(), path)
    with pytest.raises(StateDictMismatchError) as caught:
        statevault.load_into(model, path)
    cause = caught.value.report.causes[0]
    assert cause.kind == "optimizer_state"
    resumed = torch.optim.Adam(model.parameters())
    exec(cause.code, {"statevault": statevault, "optimizer": resumed})
    assert torch.equal(
        resumed.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"]
    )
    with pytest.raises(UnsupportedObjectError, match=r"optimizer\.load_state_dict\(state\)"):
        statevault.load_into(model, optimizer.state_dict())  # the dict itself, in memory


class Model(nn.Module):
    def __init__(self, input_feat: int) -> None:
        super().__init__()
        self.linear = nn.Linear(input_feat, 1)


def test_a_class_where_an_instance_belongs_and_the_reverse(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    with pytest.raises(UnsupportedObjectError, match=r"got the class Model.*pass an instance"):
        statevault.save(Model, path)  # type: ignore[arg-type]
    statevault.save(Model(6), path)
    for entry in (statevault.load_into, statevault.load_model, statevault.check):
        with pytest.raises(UnsupportedObjectError, match=r"got the class Model.*pass an instance"):
            entry(Model, path)  # type: ignore[arg-type]
    with pytest.raises(UnsupportedObjectError, match=r"pass the class.*build_model\(Model, "):
        statevault.build_model(Model(6), path)  # type: ignore[arg-type]
    assert statevault.load_model(Model(6), path).ok  # the fixes: an instance, and the class
    assert statevault.build_model(Model, path, args=(6,)).linear.weight.shape == (1, 6)


def test_load_model_loads_into_an_existing_model_like_safetensors(tmp_path: Path) -> None:
    source = bert(BertModel, 1)
    path = tmp_path / "bert.safetensors"
    statevault.save(source, path)
    model = bert(BertModel, 2)
    report = statevault.load_model(model, path)
    assert report.ok
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_gpt2_tied_head_stays_tied_and_a_new_vocabulary_is_initialised(tmp_path: Path) -> None:
    config = {"n_embd": 32, "n_layer": 1, "n_head": 2, "n_positions": 16}
    torch.manual_seed(1)
    source = GPT2LMHeadModel(GPT2Config(vocab_size=50, **config))
    path = tmp_path / "gpt2.safetensors"
    statevault.save(source, path)
    model = statevault.build_model(
        GPT2LMHeadModel, path, args=(GPT2Config(vocab_size=50, **config),)
    )
    assert model.lm_head.weight is model.transformer.wte.weight
    assert torch.equal(model.transformer.wte.weight, source.transformer.wte.weight)

    poison_freed_memory([60 * 32])
    bigger = statevault.build_model(
        GPT2LMHeadModel,
        path,
        args=(GPT2Config(vocab_size=60, initializer_range=0.5, **config),),
        strict=False,
    )
    assert bigger.lm_head.weight is bigger.transformer.wte.weight
    assert torch.isfinite(bigger.transformer.wte.weight).all()
    assert 0.3 < float(bigger.transformer.wte.weight.detach().std()) < 0.7
    assert torch.equal(
        bigger.transformer.h[0].mlp.c_fc.weight, source.transformer.h[0].mlp.c_fc.weight
    )


def test_accelerate_empty_model_is_refused_with_a_fix_that_materialises_it(
    tmp_path: Path,
) -> None:
    source = bert(BertModel, 1)
    path = tmp_path / "bert.safetensors"
    statevault.save(source, path)
    with init_empty_weights():
        model = BertModel(BertConfig(**TINY))
    assert model.embeddings.word_embeddings.weight.is_meta
    assert statevault.check(model, path).ok  # shapes only: fine on meta
    with pytest.raises(MetaDeviceError) as caught:
        statevault.load_into(model, path)
    assert "nothing would be loaded" in str(caught.value)
    report = run_fix(printed_fix(str(caught.value)), {"statevault": statevault, "model": model})
    assert report.ok
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_a_model_moved_to_meta_with_computed_buffers_is_told_to_rebuild(tmp_path: Path) -> None:
    path = tmp_path / "bert.safetensors"
    statevault.save(bert(BertModel, 1), path)
    model = bert(BertModel, 2).to("meta")
    with pytest.raises(
        MetaDeviceError, match=r"Non-persistent buffers are on meta too.*position_ids"
    ):
        statevault.load_into(model, path)
