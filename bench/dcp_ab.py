"""DCP with statevault.dcp vs DCP's own FileSystemWriter/Reader, and ranged S3 reads.

Rows, each a ratio of medians from the same run (contenders alternate every round):

- ``dcp save``/``dcp load``: two gloo ranks on localhost each hold half of a sharded
  state (DTensor ``Shard(0)`` of 16 MiB float32 tensors); ``dcp.save``/``dcp.load`` through
  ``statevault.dcp.Writer``/``Reader`` (checksums written and verified) vs
  ``FileSystemWriter``/``FileSystemReader`` (no checksums), same directory kind (tmpfs
  when /dev/shm exists), the slower rank's time per round.
- ``s3 one tensor``: one tensor of a checkpoint on a local S3 server (moto, 127.0.0.1),
  read with a ranged header request and one ranged request for its bytes, vs downloading
  the whole file; bytes transferred and time. Once through the DCP backend's rank file,
  once through ``statevault.Checkpoint(url).read([name])`` (sniff, header, tensor).
- ``s3 load``: ``statevault.load(url)`` of the whole checkpoint (header, then every
  tensor as parallel ranged requests, verified) vs downloading the file whole and loading
  the local copy; bytes transferred and time. moto copies the whole object for every
  ranged GET (a 32-byte range of a 64 MiB object took 0.09-0.13 s here, of a 1 MiB one
  0.010-0.014 s), so its times overstate what each extra request costs on real S3; the
  bytes ratio is the portable figure.

    python -m bench.dcp_ab --mib 256 --rounds 3      (--only s3: the S3 rows alone)
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import statistics
import tempfile
import time
import warnings
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp

TENSOR_MIB = 16


def _sharded_state(mib: int) -> dict[str, Any]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    rows = TENSOR_MIB * 2**20 // 4 // 1024
    torch.manual_seed(0)
    return {
        f"layer{i}.weight": distribute_tensor(torch.randn(rows, 1024), mesh, [Shard(0)])
        for i in range(max(1, mib // TENSOR_MIB))
    }


def _timed(action: Any) -> float:
    dist.barrier()
    start = time.perf_counter()
    action()
    elapsed = torch.tensor([time.perf_counter() - start])
    dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)  # the slower rank is the save's time
    return float(elapsed)


def _rank(rank: int, world: int, port: int, mib: int, rounds: int, root: str, out: Any) -> None:
    from statevault.dcp import Reader, Writer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    state = _sharded_state(mib)
    target = {k: torch.zeros_like(v) for k, v in state.items()}
    times: dict[str, list[float]] = {}
    contenders = {
        "statevault": (Writer, Reader),
        "filesystem": (dcp.FileSystemWriter, dcp.FileSystemReader),
    }
    for round_ in range(rounds):
        order = list(contenders) if round_ % 2 == 0 else list(reversed(contenders))
        for name in order:
            writer, reader = contenders[name]
            path = f"{root}/{name}"
            times.setdefault(f"{name} save", []).append(
                _timed(lambda: dcp.save(state, storage_writer=writer(path)))  # noqa: B023
            )
            times.setdefault(f"{name} load", []).append(
                _timed(lambda: dcp.load(target, storage_reader=reader(path)))  # noqa: B023
            )
    if rank == 0:
        out.put({k: statistics.median(v) for k, v in times.items()})
    dist.destroy_process_group()


def dcp_rows(mib: int, rounds: int) -> list[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    context = mp.get_context("spawn")
    queue = context.Queue()
    with tempfile.TemporaryDirectory(dir=base) as root:
        mp.start_processes(
            _rank, args=(2, port, mib, rounds, root, queue), nprocs=2, start_method="spawn"
        )
        medians = queue.get(timeout=60)
    rows = []
    for step in ("save", "load"):
        ours, theirs = medians[f"statevault {step}"], medians[f"filesystem {step}"]
        rows.append(
            f"dcp {step} ({mib} MiB, 2 ranks): statevault.dcp {ours:.3f} s, "
            f"FileSystem{'Writer' if step == 'save' else 'Reader'} {theirs:.3f} s, "
            f"ratio {ours / theirs:.2f}x"
        )
    return rows


def s3_rows(mib: int, rounds: int) -> list[str]:
    from moto.server import ThreadedMotoServer

    import statevault
    from statevault.dcp.rank_files import RankFile
    from statevault.engine.fsspec_storage import FsspecStorage
    from statevault.engine.memory import tensor_memory

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        options = {
            "key": "k", "secret": "s", "endpoint_url": f"http://{host}:{port}",
            "client_kwargs": {"region_name": "us-east-1"}, "skip_instance_cache": True,
        }  # fmt: skip
        storage = FsspecStorage.for_url("s3://bench", options)
        import boto3

        boto3.client(
            "s3", endpoint_url=options["endpoint_url"], aws_access_key_id="k",
            aws_secret_access_key="s", region_name="us-east-1",
        ).create_bucket(Bucket="bench")  # fmt: skip
        tensors = {
            f"t{i}": torch.randn(TENSOR_MIB * 2**18) for i in range(max(1, mib // TENSOR_MIB))
        }
        url = "s3://bench/big.safetensors"
        statevault.save(tensors, url, storage_options=options)
        fetched: list[int] = []
        real = storage.fs.cat_file

        def counting(path: str, start: int | None = None, end: int | None = None) -> bytes:
            data = bytes(real(path, start=start, end=end))
            fetched.append(len(data))
            return data

        storage.fs.cat_file = counting
        ranged, whole = [], []
        for _ in range(rounds):
            fetched.clear()
            start = time.perf_counter()
            rank_file = RankFile(storage, url)
            entry = rank_file.entry("t1")
            out = torch.empty(entry.nbytes // 4)
            rank_file.read_into(entry, tensor_memory(out), 0)
            rank_file.check_whole(entry, tensor_memory(out))
            ranged.append(time.perf_counter() - start)
            ranged_bytes = sum(fetched)
            fetched.clear()
            start = time.perf_counter()
            storage.fs.cat_file(url)
            whole.append(time.perf_counter() - start)
            whole_bytes = sum(fetched)
        rows = [_s3_row(f"s3 one tensor of {len(tensors)} ({TENSOR_MIB} MiB of {mib} MiB)",
                        "ranged", ranged, ranged_bytes, "whole file", whole, whole_bytes)]  # fmt: skip
        rows += _entry_point_rows(url, options, storage, tensors, mib, rounds)
    finally:
        server.stop()
    return rows


def _entry_point_rows(
    url: str, options: dict[str, Any], storage: Any, tensors: dict[str, Any], mib: int, rounds: int
) -> list[str]:
    """``Checkpoint(url).read`` of one tensor and ``load(url)`` of all, vs a whole download."""
    from s3fs import S3FileSystem

    import statevault

    fetched: list[int] = []
    real = S3FileSystem._cat_file

    async def counting(self: Any, path: str, **kwargs: Any) -> bytes:
        data: bytes = await real(self, path, **kwargs)
        fetched.append(len(data))
        return data

    S3FileSystem._cat_file = counting  # every file system made from now on counts
    # fsspec's instance cache on, as in any process that opens more than one checkpoint: the
    # file system (its connection pool) is made in the first round, after the patch above
    options = {k: v for k, v in options.items() if k != "skip_instance_cache"}
    try:
        times: dict[str, list[float]] = {"one": [], "all": [], "whole": []}
        sizes: dict[str, int] = {}
        with tempfile.TemporaryDirectory() as folder:
            copy = os.path.join(folder, "big.safetensors")
            for _ in range(rounds):
                for key, action in (
                    ("one", lambda: _read_one(url, options)),
                    ("all", lambda: statevault.load(url, storage_options=options)),
                    ("whole", lambda: _download_and_load(storage, url, copy)),
                ):
                    fetched.clear()
                    start = time.perf_counter()
                    action()
                    times[key].append(time.perf_counter() - start)
                    # a download is one streamed GET, not ranged reads: count the file
                    sizes[key] = os.path.getsize(copy) if key == "whole" else sum(fetched)
    finally:
        S3FileSystem._cat_file = real
    total = f"{len(tensors)} tensors, {mib} MiB"
    return [
        _s3_row(f"s3 Checkpoint(url).read one tensor ({TENSOR_MIB} MiB of {mib} MiB)",
                "ranged", times["one"], sizes["one"], "whole file", times["whole"],
                sizes["whole"]),
        _s3_row(f"s3 load(url) ({total})", "ranged, parallel", times["all"], sizes["all"],
                "download + load", times["whole"], sizes["whole"]),
    ]  # fmt: skip


def _read_one(url: str, options: dict[str, Any]) -> None:
    import statevault

    with statevault.Checkpoint(url, storage_options=options) as ckpt:
        ckpt.read(["t1"])


def _download_and_load(storage: Any, url: str, copy: str) -> None:
    import statevault

    storage.fs.get_file(url, copy)
    statevault.load(copy)


def _s3_row(
    what: str, ours: str, ours_times: list[float], ours_bytes: int,
    theirs: str, theirs_times: list[float], theirs_bytes: int,
) -> str:  # fmt: skip
    r, w = statistics.median(ours_times), statistics.median(theirs_times)
    return (
        f"{what}: {ours} {ours_bytes / 2**20:.1f} MiB in {r:.3f} s, {theirs} "
        f"{theirs_bytes / 2**20:.1f} MiB in {w:.3f} s, time ratio {r / w:.2f}x, bytes ratio "
        f"{ours_bytes / theirs_bytes:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=("dcp", "s3"), default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    rows = [] if args.only == "s3" else dcp_rows(args.mib, args.rounds)
    rows += [] if args.only == "dcp" else s3_rows(args.mib, args.rounds)
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
