"""The command line on S3 URLs (moto, local): --storage-option on every command that reads
a checkpoint, inspect reading only headers, verify reading each byte once, and no
credential ever printed, in output or in errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner, Result

import statevault
from statevault.cli import main
from statevault.engine import tuning
from statevault.engine.fsspec_storage import FsspecStorage

URL = "s3://bucket/ckpt.safetensors"


def _flags(options: dict[str, Any]) -> list[str]:
    """The s3 fixture's storage_options as --storage-option flags."""
    flags = []
    for key, value in options.items():
        if isinstance(value, dict):
            flags += [f"{key}.{k}={json.dumps(v)}" for k, v in value.items()]
        else:
            flags.append(f"{key}={json.dumps(value) if not isinstance(value, str) else value}")
    return [item for flag in flags for item in ("--storage-option", flag)]


def run(options: dict[str, Any], *args: str | Path) -> Result:
    result = CliRunner().invoke(main, [*map(str, args), *_flags(options)])
    assert options["secret"] not in result.output  # stdout and stderr, whatever happened
    return result


@pytest.fixture
def state(s3: dict[str, Any]) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    tensors = {f"layers.{i}.weight": torch.randn(256, 256) for i in range(4)}  # 256 KiB each
    statevault.save(tensors, URL, storage_options=s3)
    return tensors


def test_inspect_reads_the_header_alone(
    s3: dict[str, Any], state: dict[str, torch.Tensor], fetched: list[int]
) -> None:
    result = run(s3, "inspect", URL, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert len(summary["tensors"]) == 4 and summary["path"] == URL
    assert fetched == [tuning.HEAD_GUESS_BYTES]  # the kind and the header, one request
    assert sum(fetched) < sum(t.nbytes for t in state.values()) / 10


def test_verify_reads_each_byte_once(
    s3: dict[str, Any], state: dict[str, torch.Tensor], fetched: list[int]
) -> None:
    result = run(s3, "verify", URL)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"{URL}: OK (checksums): 4 tensor(s)")
    size = FsspecStorage.for_url(URL, s3).open(URL).size
    data = sum(t.nbytes for t in state.values())
    assert fetched[0] == tuning.HEAD_GUESS_BYTES
    assert sum(fetched[1:]) == data and sum(fetched) < size + tuning.HEAD_GUESS_BYTES


def test_verify_names_a_damaged_tensor_of_a_remote_file(
    s3: dict[str, Any], state: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    fs = FsspecStorage.for_url(URL, s3).fs
    data = bytearray(fs.cat_file("bucket/ckpt.safetensors"))
    data[-10] ^= 0xFF  # in the last tensor
    fs.pipe_file("bucket/ckpt.safetensors", bytes(data))
    result = run(s3, "verify", URL)
    assert result.exit_code == 1, result.output
    assert "layers.3.weight" in result.stdout


def test_diff_convert_stats_and_report_take_urls(
    s3: dict[str, Any], state: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    converted = "s3://bucket/out/model.safetensors"
    result = run(s3, "convert", URL, converted, "--dtype", "bf16")
    assert result.exit_code == 0, result.output
    again = run(s3, "convert", URL, converted)
    assert again.exit_code == 2 and "already exists" in again.output
    local = tmp_path / "local.safetensors"
    assert run(s3, "convert", URL, local).exit_code == 0
    same = run(s3, "diff", URL, local)
    assert same.exit_code == 0, same.output
    differ = run(s3, "diff", URL, converted)
    assert differ.exit_code == 1, differ.output
    stats = run(s3, "stats", URL, "--json")
    assert stats.exit_code == 0 and len(json.loads(stats.stdout)["tensors"]) == 4
    page = tmp_path / "report.html"
    report = run(s3, "report", URL, converted, "-o", page)
    assert report.exit_code == 0, report.output
    assert "layers.0.weight" in page.read_text()


def test_sharded_convert_to_a_url_commits_its_index(
    s3: dict[str, Any], state: dict[str, torch.Tensor]
) -> None:
    result = run(s3, "convert", URL, "s3://bucket/sh/model.safetensors", "--json")
    assert result.exit_code == 0, result.output
    sharded = statevault.convert(
        URL, "s3://bucket/sh2/model.safetensors", max_shard_size=300_000, storage_options=s3
    )
    assert sharded.destination == "s3://bucket/sh2/model.safetensors.index.json"
    assert run(s3, "verify", "s3://bucket/sh2").exit_code == 0


def test_wrong_credentials_and_a_missing_bucket_never_print_the_secret(
    authenticating: dict[str, Any],
) -> None:
    statevault.save({"w": torch.ones(2)}, URL, storage_options=authenticating)
    wrong = {**authenticating, "secret": "wrong-secret-value-42"}
    for command in ("inspect", "verify", "stats"):
        result = run(wrong, command, URL)
        assert result.exit_code == 2 and "credentials" in result.output, result.output
        assert URL in result.output
    missing = run(authenticating, "inspect", "s3://no-such-bucket/x.safetensors")
    assert missing.exit_code == 2 and "no such" in missing.output


def test_a_malformed_option_is_refused_without_echoing_it(s3: dict[str, Any]) -> None:
    result = CliRunner().invoke(main, ["inspect", URL, "--storage-option", "hunter2"])
    assert result.exit_code == 2 and "KEY=VALUE" in result.output
    assert "hunter2" not in result.output


def test_storage_options_with_a_local_path_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    statevault.save({"w": torch.ones(2)}, path)
    refused = CliRunner().invoke(main, ["inspect", str(path), "--storage-option", "anon=true"])
    assert refused.exit_code == 2 and "leave it out" in refused.output
    assert CliRunner().invoke(main, ["inspect", str(path)]).exit_code == 0  # the fix
