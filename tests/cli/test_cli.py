"""The ``statevault`` command line: exit codes, --json parsed back, one-line errors."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result
from rich.console import Console

import statevault
from helpers.samples import assert_same, flip_byte, legacy_state, training_state, write_sharded
from statevault.cli import main
from statevault.cli._output import human_bytes, progress_bar


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    path = tmp_path / "ckpt.safetensors"
    statevault.save(training_state(), path, metadata={"run": "baseline"})
    return path


def test_inspect_human_and_json(ckpt: Path) -> None:
    human = run("inspect", ckpt)
    assert human.exit_code == 0, human.output
    for text in ("statevault format 3", "embed", "tied to model.embed.weight", "run: baseline"):
        assert text in human.stdout
    assert "epoch = 3" in human.stdout
    as_json = run("inspect", ckpt, "--json")
    assert as_json.exit_code == 0
    data = json.loads(as_json.stdout)
    assert data == json.loads(json.dumps(statevault.inspect(ckpt).to_dict()))
    assert data["state"]["epoch"] == 3


def test_inspect_depth_hides_leaves_but_keeps_totals(ckpt: Path) -> None:
    shallow = run("inspect", ckpt, "--depth", "1")
    assert shallow.exit_code == 0
    assert "embed" not in shallow.stdout and "model" in shallow.stdout


def test_inspect_legacy_pt_and_sharded_dir(tmp_path: Path) -> None:
    pt = tmp_path / "old.pt"
    torch.save(legacy_state(), pt, _use_new_zipfile_serialization=False)
    data = json.loads(run("inspect", pt, "--json").stdout)
    assert data["kind"] == "torch-legacy" and data["aliases"]
    directory = write_sharded(tmp_path / "hf", {"a": torch.ones(2), "b": torch.ones(3)})
    data = json.loads(run("inspect", directory, "--json").stdout)
    assert data["kind"] == "sharded" and data["numel"] == 5
    assert {t["file"] for t in data["tensors"]} == {
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    }


def test_verify_exit_codes_and_names_the_damaged_tensor(ckpt: Path, tmp_path: Path) -> None:
    good = run("verify", ckpt)
    assert good.exit_code == 0 and "OK (checksums)" in good.stdout
    with statevault.Checkpoint(ckpt) as opened:
        info = opened.tensors["optim.state.1.exp_avg_sq"]
    flip_byte(ckpt, info.offset)
    bad = run("verify", ckpt)
    assert bad.exit_code == 1
    assert "optim.state.1.exp_avg_sq" in bad.stdout and "DAMAGED" in bad.stdout
    data = json.loads(run("verify", ckpt, "--json").stdout)
    assert data["ok"] is False and [b["name"] for b in data["bad"]] == [info.name]
    missing = run("verify", tmp_path / "nope.safetensors")
    assert missing.exit_code == 2


def test_diff_exit_codes_like_diff(tmp_path: Path) -> None:
    state = legacy_state()
    a, pt = tmp_path / "a.sv", tmp_path / "a.pt"
    statevault.save(state, a)
    torch.save(state, pt, _use_new_zipfile_serialization=False)
    same = run("diff", a, pt)
    assert same.exit_code == 0 and "are equal" in same.stdout
    changed = dict(state, epoch=4)
    b = tmp_path / "b.sv"
    statevault.save(changed, b)
    different = run("diff", a, b, "--json")
    assert different.exit_code == 1
    assert json.loads(different.stdout)["state_changes"] == [{"path": "epoch", "a": 3, "b": 4}]
    assert run("diff", a, tmp_path / "missing.sv").exit_code == 2
    assert run("diff", a, b, "--atol", "-1").exit_code == 2  # click's usage error


def test_diff_tolerances_from_the_command_line(tmp_path: Path) -> None:
    a, b = tmp_path / "a.sv", tmp_path / "b.sv"
    statevault.save({"w": torch.tensor([1.0, 2.0])}, a)
    statevault.save({"w": torch.tensor([1.0, 2.01])}, b)
    assert run("diff", a, b).exit_code == 1
    assert run("diff", a, b, "--atol", "0.02").exit_code == 0
    assert run("diff", a, b, "--rtol", "0.01").exit_code == 0


def test_convert_output_loads_equal_to_its_source(tmp_path: Path) -> None:
    state = legacy_state()
    src, dst = tmp_path / "legacy.pt", tmp_path / "out.safetensors"
    torch.save(state, src, _use_new_zipfile_serialization=False)
    result = run("convert", src, dst, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["tensors"] == len(statevault.fileformat.tree.flatten(state)[1])
    assert_same(state, statevault.load(dst))
    assert run("diff", src, dst).exit_code == 0
    sub = run("convert", src, tmp_path / "m.sv", "--keys", "^model", "--strip-prefix", "model.")
    assert sub.exit_code == 0, sub.output
    assert_same(dict(state["model"]), statevault.load(tmp_path / "m.sv"))
    cast = run("convert", src, tmp_path / "h.sv", "--dtype", "bf16")
    assert cast.exit_code == 0 and "cast to bfloat16" in cast.stdout
    assert run("convert", src, tmp_path / "x.sv", "--keys", "(").exit_code == 2


def test_convert_dtype_takes_every_spelling_the_library_does(tmp_path: Path) -> None:
    src = tmp_path / "src.sv"
    statevault.save({"w": torch.ones(3)}, src)
    for spelling in ("BF16", "torch.bfloat16", "bfloat16"):
        out = tmp_path / f"{spelling}.sv"
        assert run("convert", src, out, "--dtype", spelling).exit_code == 0
        assert statevault.load(out)["w"].dtype == torch.bfloat16
    refused = run("convert", src, tmp_path / "int.sv", "--dtype", "int8")
    assert refused.exit_code == 2
    assert "'int8' is not a floating-point dtype" in refused.stderr and "bf16" in refused.stderr
    assert not (tmp_path / "int.sv").exists()


def test_errors_are_one_line_without_traceback_unless_debug(tmp_path: Path) -> None:
    evil = tmp_path / "evil.pt"
    torch.save({"cfg": Path("/")}, evil)
    result = run("convert", evil, tmp_path / "out.sv")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "arbitrary code" in result.stderr and "Traceback" not in result.output
    debug = run("--debug", "inspect", evil)
    assert isinstance(debug.exception, statevault.UnsupportedObjectError)  # propagates
    after = run("inspect", evil, "--debug")
    assert isinstance(after.exception, statevault.UnsupportedObjectError)


def test_real_process_exit_code_and_stderr(ckpt: Path) -> None:
    with statevault.Checkpoint(ckpt) as opened:
        info = opened.tensors["model.block.0.weight"]
    flip_byte(ckpt, info.offset + 3)
    src = Path(statevault.__file__).parents[1]
    done = subprocess.run(
        [sys.executable, "-m", "statevault", "verify", str(ckpt)],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(src), "PATH": ""},
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert "model.block.0.weight" in done.stdout
    assert "\x1b[" not in done.stdout  # piped: no colour codes, no progress bar
    assert done.stderr == ""


def test_progress_bar_only_on_a_terminal() -> None:
    with progress_bar("x", console=Console(file=io.StringIO())) as quiet:
        assert quiet is None
    with progress_bar("x", console=Console(file=io.StringIO(), force_terminal=True)) as bar:
        assert bar is not None
        bar.start(100)
        bar.advance(60)
        task = bar._progress.tasks[0]
        assert (task.total, task.completed) == (100, 60)


def test_human_bytes() -> None:
    assert [human_bytes(n) for n in (0, 1023, 1024, 3 << 30)] == [
        "0 B",
        "1023 B",
        "1.0 KiB",
        "3.0 GiB",
    ]
