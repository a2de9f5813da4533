"""One verdict per input across commands: 0 ok, 1 finding, 2 could not do the job, 130 Ctrl-C."""

from __future__ import annotations

import re
import signal
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result

import statevault
from helpers.samples import flip_byte, legacy_state
from statevault.cli import main
from statevault.tools.conversion import select


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def _good(tmp_path: Path) -> Path:
    path = tmp_path / "good.safetensors"
    statevault.save({"w": torch.arange(100.0), "epoch": 2}, path)
    return path


def _photo(tmp_path: Path) -> Path:
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
    return photo


def _commands(path: Path, other: Path, out: Path) -> list[list[str | Path]]:
    return [
        ["inspect", path],
        ["verify", path],
        ["diff", path, other],
        ["diff", other, path],
        ["convert", path, out],
    ]


@pytest.mark.parametrize("name", ["photo.png", "photo.pt", "empty.safetensors", "notes.zip"])
def test_a_file_that_is_not_a_checkpoint_is_exit_2_for_every_command(
    tmp_path: Path, name: str
) -> None:
    path = tmp_path / name
    if name.startswith("photo"):
        path.write_bytes(_photo(tmp_path).read_bytes())
    elif name.endswith(".zip"):
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("readme.txt", "not a torch file")
    else:
        path.write_bytes(b"")
    for args in _commands(path, _good(tmp_path), tmp_path / "out.sv"):
        result = run(*args)
        assert result.exit_code == 2, (args, result.output)
        assert "not a checkpoint" in result.stderr, (args, result.stderr)
        assert "DAMAGED" not in result.output
    with pytest.raises(statevault.NotACheckpointError, match="not a checkpoint"):
        statevault.verify(path)
    assert not (tmp_path / "out.sv").exists()


def test_a_damaged_checkpoint_is_exit_1_for_every_command(tmp_path: Path) -> None:
    good = _good(tmp_path)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-10])
    for args in _commands(truncated, good, tmp_path / "out.sv"):
        result = run(*args)
        assert result.exit_code == 1, (args, result.output)
        assert "truncated" in result.output, (args, result.output)
    flipped = tmp_path / "flipped.safetensors"
    flipped.write_bytes(good.read_bytes())
    with statevault.Checkpoint(flipped) as opened:
        flip_byte(flipped, opened.tensors["w"].offset + 5)
    for args in (
        ["verify", flipped],
        ["diff", flipped, good],
        ["convert", flipped, tmp_path / "o"],
    ):
        result = run(*args)
        assert result.exit_code == 1, (args, result.output)
        assert "'w'" in result.output or "w:" in result.output, result.output


def _flip_in_zip_entry(path: Path, suffix: str, at: int) -> str:
    """Flip one byte inside the stored data of the zip entry ending with ``suffix``."""
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(suffix))
    raw = bytearray(path.read_bytes())
    name_length, extra_length = struct.unpack(
        "<HH", raw[info.header_offset + 26 : info.header_offset + 30]
    )
    raw[info.header_offset + 30 + name_length + extra_length + at] ^= 0xFF
    path.write_bytes(raw)
    return info.filename


def test_verify_checks_the_crc32_of_every_entry_of_a_torch_zip(tmp_path: Path) -> None:
    pt = tmp_path / "model.pt"
    torch.save({"w": torch.arange(1000.0), "b": torch.ones(7)}, pt)
    good = run("verify", pt)
    assert good.exit_code == 0, good.output
    assert "CRC-32" in good.stdout
    assert "no checksums" not in good.output and "DAMAGED" not in good.output
    report = statevault.verify(pt)
    with zipfile.ZipFile(pt) as archive:
        infos = archive.infolist()
    assert report.ok and report.kind == "torch" and report.checksummed
    assert report.tensors_checked == len(infos)
    assert report.bytes_checked == sum(i.file_size for i in infos)

    entry = _flip_in_zip_entry(pt, "data/0", at=100)
    with zipfile.ZipFile(pt) as archive:
        assert archive.testzip() == entry  # the stdlib reference agrees it is damaged
    bad = run("verify", pt)
    assert bad.exit_code == 1, bad.output
    assert entry in bad.stdout and "DAMAGED" in bad.stdout
    report = statevault.verify(pt)
    assert [b.name for b in report.bad] == [entry]
    expected = f"{next(i.CRC for i in infos if i.filename == entry):08x}"
    assert report.bad[0].expected == expected and report.bad[0].found != expected


def test_verify_of_a_legacy_torch_file_says_there_is_nothing_to_check(tmp_path: Path) -> None:
    pt = tmp_path / "old.pt"
    torch.save(legacy_state(), pt, _use_new_zipfile_serialization=False)
    result = run("verify", pt)
    assert result.exit_code == 0, result.output
    assert "nothing to" in result.stdout and "DAMAGED" not in result.stdout


def test_convert_refuses_an_existing_destination_unless_forced(tmp_path: Path) -> None:
    src = _good(tmp_path)
    victim = tmp_path / "victim.pt"
    victim.write_bytes(b"precious")
    refused = run("convert", src, victim)
    assert refused.exit_code == 2
    assert "already exists" in refused.stderr and "--force" in refused.stderr
    assert victim.read_bytes() == b"precious"
    with pytest.raises(statevault.DestinationExistsError) as caught:
        statevault.convert(src, victim)
    assert "--" not in str(caught.value)  # library messages name no CLI flags
    assert isinstance(caught.value, FileExistsError)
    forced = run("convert", src, victim, "--force")
    assert forced.exit_code == 0, forced.output
    assert torch.equal(statevault.load(victim)["w"], torch.arange(100.0))
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".svtmp")] == []
    same = run("convert", src, src, "--force")
    assert same.exit_code == 2  # never its own source, even forced


def test_library_messages_name_no_cli_flags() -> None:
    with pytest.raises(statevault.InvalidArgumentError) as no_match:
        select(["a.w", "b.w"], keys=re.compile("^z"), strip_prefix=[])
    with pytest.raises(statevault.KeyMappingError) as collision:
        select(["x.c", "c"], keys=None, strip_prefix=["x."])
    for caught in (no_match, collision):
        assert "--" not in str(caught.value)


def test_ctrl_c_exits_130_not_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    good = _good(tmp_path)
    for function, args in [
        ("verify", ["verify", good]),
        ("diff", ["diff", good, good]),
        ("convert", ["convert", good, tmp_path / "o.sv"]),
    ]:
        monkeypatch.setattr(statevault, function, interrupted)  # the CLI calls the public API
        result = run(*args)
        assert result.exit_code == 130, (args, result.output)
        assert "interrupted" in result.stderr


# A verify that is still running when Ctrl-C comes: the hashing is held at its first read
# (readers refuse named pipes now, so a pipe can no longer hold the command open).
_SLOW_VERIFY = """
import sys, time
import statevault.engine.scan as scan
from statevault.cli import main

real = scan.hash_rows
def held(*args, **kwargs):
    print("hashing", flush=True)
    time.sleep(60)
    return real(*args, **kwargs)
scan.hash_rows = held
import statevault.tools.verification as verify_module
verify_module.hash_rows = held
main(["verify", sys.argv[1]])
"""


def test_ctrl_c_in_a_real_process_exits_130(tmp_path: Path) -> None:
    good = _good(tmp_path)
    src = Path(statevault.__file__).parents[1]
    process = subprocess.Popen(
        [sys.executable, "-c", _SLOW_VERIFY, str(good)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={"PYTHONPATH": str(src), "PATH": ""},
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == b"hashing\n"  # verify is under way
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert b"interrupted" in stderr and b"Traceback" not in stderr
