"""Every read entry point on a real S3 endpoint (moto, local): Checkpoint, load, load_into,
build_model/materialize, check and sliced reads of one file, of a sharded checkpoint and of
a statevault DCP directory, each reading only the header and the bytes it needs."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch import nn

import statevault
from statevault.dcp import Writer
from statevault.engine import tuning
from statevault.engine.fsspec_storage import FsspecStorage

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 32)
        self.fc2 = nn.Linear(32, 8)


def _names(options: dict[str, Any], prefix: str) -> list[str]:
    fs = FsspecStorage.for_url("s3://bucket", options).fs
    return sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"bucket/{prefix}", refresh=True))


def test_one_tensor_reads_the_header_then_only_that_tensor(
    s3: dict[str, Any], fetched: list[int]
) -> None:
    big = {f"t{i}": torch.randn(256, 256) for i in range(8)}  # 2 MiB, 256 KiB a tensor
    url = "s3://bucket/big.safetensors"
    statevault.save(big, url, storage_options=s3)
    with statevault.Checkpoint(url, storage_options=s3) as ckpt:
        opened = list(fetched)
        tensor = ckpt.read(["t5"])["t5"]
    assert torch.equal(tensor, big["t5"])
    # opening: one generous read tells the kind and holds the header
    assert opened == [tuning.HEAD_GUESS_BYTES]
    assert fetched[len(opened) :] == [256 * 256 * 4]  # then exactly the tensor, in one request


def test_a_header_longer_than_the_first_read_costs_one_more_request(
    s3: dict[str, Any], fetched: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = "s3://bucket/many.safetensors"
    statevault.save({f"t{i}": torch.zeros(1) for i in range(64)}, url, storage_options=s3)
    monkeypatch.setattr(tuning, "HEAD_GUESS_BYTES", 256)
    with statevault.Checkpoint(url, storage_options=s3) as ckpt:
        assert len(ckpt.keys()) == 64
    assert len(fetched) == 2 and fetched[0] == 256 and fetched[1] > 256


def test_load_of_nested_state_round_trips(s3: dict[str, Any]) -> None:
    state = {"model": {"w": torch.randn(8, 4)}, "step": 7, "lr": [0.1, 0.01]}
    url = "s3://bucket/run/ckpt.safetensors"
    statevault.save(state, url, storage_options=s3)
    loaded = statevault.load(url, storage_options=s3)
    assert loaded["step"] == 7 and loaded["lr"] == [0.1, 0.01]
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])


def test_large_tensors_are_read_in_parallel_whole_block_requests(
    s3: dict[str, Any], fetched: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = "s3://bucket/blocks.safetensors"
    big = {"w": torch.randn(1 << 18)}  # 1 MiB
    statevault.save(big, url, storage_options=s3)
    monkeypatch.setattr(tuning, "SMALL_READ_BYTES", 1 << 10)  # "large" from 1 KiB
    with statevault.Checkpoint(url, storage_options=s3) as ckpt:
        fetched.clear()
        assert torch.equal(ckpt.read(["w"])["w"], big["w"])
    assert fetched == [1 << 20]  # one block: one request, not 1 MiB verify-sized pieces


def test_load_into_build_model_materialize_and_check(s3: dict[str, Any]) -> None:
    torch.manual_seed(0)
    source = Net()
    url = "s3://bucket/net.safetensors"
    statevault.save(source, url, storage_options=s3)
    target = Net()
    report = statevault.load_into(target, url, storage_options=s3)
    assert report.ok and torch.equal(target.fc1.weight, source.fc1.weight)
    assert statevault.load_model(Net(), url, storage_options=s3).ok
    built = statevault.build_model(Net, url, storage_options=s3)
    assert torch.equal(built.fc2.bias, source.fc2.bias)
    with statevault.skip_init():
        empty = Net()
    statevault.materialize(empty, url, storage_options=s3, strict=False)
    assert torch.equal(empty.fc2.weight, source.fc2.weight)
    assert statevault.check(Net(), url, storage_options=s3).ok


def test_a_printed_fix_names_storage_options_but_never_its_values(s3: dict[str, Any]) -> None:
    url = "s3://bucket/net.safetensors"
    statevault.save(Net(), url, storage_options=s3)
    meta = Net().to("meta")
    with pytest.raises(statevault.MetaDeviceError) as caught:
        statevault.load_into(meta, url, storage_options=s3)
    message = str(caught.value)
    fix = f'statevault.materialize(model, "{url}", storage_options=storage_options)'
    assert fix in message
    assert s3["secret"] not in message and s3["key"] not in message
    eval(
        fix.replace("model", "meta", 1),
        {"statevault": statevault, "meta": meta, "storage_options": s3},
    )  # the fix, run as printed
    assert not meta.fc1.weight.is_meta


def test_sliced_reads_fetch_only_the_rows_asked_for(s3: dict[str, Any], fetched: list[int]) -> None:
    table = torch.arange(1000 * 16, dtype=torch.float32).reshape(1000, 16)
    url = "s3://bucket/table.safetensors"
    statevault.save({"table": table}, url, storage_options=s3)
    with statevault.Checkpoint(url, storage_options=s3) as ckpt:
        fetched.clear()
        rows = ckpt.get_slice("table")[100:110]
        columns = ckpt.get_slice("table")[:, 2:4]
    assert torch.equal(rows, table[100:110]) and torch.equal(columns, table[:, 2:4])
    assert fetched[0] == 10 * 16 * 4  # the ten rows, in one request
    # 1000 separate runs of two columns: one request for the span, not a request per row
    assert len(fetched) == 2


def test_sharded_save_to_a_url_writes_the_index_last_and_loads_back(
    s3: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    state = {f"layer{i}.weight": torch.randn(64, 64) for i in range(4)}  # 16 KiB each
    url = "s3://bucket/sharded/model.safetensors"
    order: list[str] = []
    real_commit = type(FsspecStorage.for_url(url, s3).begin(url)).commit

    def recording(self: Any, *, durable: bool) -> None:
        order.append(self._name.rsplit("/", 1)[-1])
        real_commit(self, durable=durable)

    monkeypatch.setattr(type(FsspecStorage.for_url(url, s3).begin(url)), "commit", recording)
    statevault.save(state, url, max_shard_size=40_000, storage_options=s3)
    assert order[-1] == "model.safetensors.index.json" and len(order) == 3
    assert _names(s3, "sharded") == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
    ]
    for source in ("s3://bucket/sharded", "s3://bucket/sharded/model.safetensors.index.json"):
        loaded = statevault.load(source, storage_options=s3)
        assert all(torch.equal(loaded[k], v) for k, v in state.items())
    with statevault.Checkpoint("s3://bucket/sharded/", storage_options=s3) as ckpt:
        assert ckpt.kind == "sharded" and len(ckpt.leaves()) == 2


def test_resaving_fewer_shards_removes_the_old_ones(s3: dict[str, Any]) -> None:
    url = "s3://bucket/resave/model.safetensors"
    state = {f"w{i}": torch.randn(64, 64) for i in range(4)}
    statevault.save(state, url, max_shard_size=20_000, storage_options=s3)
    assert len(_names(s3, "resave")) == 5
    statevault.save(state, url, max_shard_size="1GB", storage_options=s3)
    assert _names(s3, "resave") == ["model.safetensors"]
    assert torch.equal(statevault.load(url, storage_options=s3)["w3"], state["w3"])


def test_a_dcp_directory_at_a_url_opens_as_one_checkpoint(s3: dict[str, Any]) -> None:
    state = {"w": torch.randn(16, 8), "b": torch.arange(4)}
    dcp.save(state, storage_writer=Writer("s3://bucket/dcp", storage_options=s3))
    with statevault.Checkpoint("s3://bucket/dcp", storage_options=s3) as ckpt:
        assert ckpt.kind == "dcp"
        assert torch.equal(ckpt.read(["w"])["w"], state["w"])
    assert torch.equal(statevault.load("s3://bucket/dcp", storage_options=s3)["b"], state["b"])


def test_memory_urls_work_without_any_server() -> None:
    url = "memory://statevault-tests/reading/model.safetensors"
    statevault.save({"w": torch.ones(3)}, url)
    assert torch.equal(statevault.load(url)["w"], torch.ones(3))


def test_load_into_and_slices_of_a_remote_sharded_checkpoint(
    s3: dict[str, Any], fetched: list[int]
) -> None:
    torch.manual_seed(1)
    source = Net()
    statevault.save(
        source, "s3://bucket/net/model.safetensors", max_shard_size=4000, storage_options=s3
    )
    assert len(_names(s3, "net")) > 2  # really sharded
    target = Net()
    assert statevault.load_into(target, "s3://bucket/net", storage_options=s3).ok
    assert torch.equal(target.fc2.weight, source.fc2.weight)
    with statevault.Checkpoint("s3://bucket/net", storage_options=s3) as ckpt:
        fetched.clear()
        rows = ckpt.get_slice("fc1.weight")[3:5]
    assert torch.equal(rows, source.fc1.weight[3:5]) and fetched == [2 * 64 * 4]
