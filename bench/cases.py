"""Every benchmark case: an untimed setup returning the operation to time, per subprocess.

A case gets a ``Config`` (file paths, model kind and sizes) and returns ``(operation,
reset)``: ``operation`` is what we time, ``reset`` runs untimed between repetitions (delete
the file a save wrote, drop what a load returned). Cases never share a process.
"""

from __future__ import annotations

import ctypes
import gc
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bench.models import build

CHUNK = 8 << 20
Operation = Callable[[], object]


@dataclass(frozen=True)
class Config:
    kind: str  # "llm", "flat" or "nested"
    model: dict[str, int]
    files: dict[str, str]  # "torch", "safetensors", "statevault" -> existing file
    out: str  # where save cases write


def _noop() -> None:
    gc.collect()


def _empty_model(cfg: Config) -> nn.Module:
    """A destination model without paying random init: built on meta, then zero-filled."""
    with torch.device("meta"):
        model = build(cfg.kind, cfg.model)
    model.to_empty(device="cpu")
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.zero_()  # touch every page so loads measure copying, not page faults
    return model


def _buffer_of(model: nn.Module) -> tuple[torch.Tensor, int]:
    nbytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return torch.zeros(nbytes, dtype=torch.uint8), nbytes


def _address(tensor: torch.Tensor) -> int:
    return int(tensor.data_ptr())


def _parallel(threads: int, work: Callable[[int, int], None], total: int) -> None:
    """Split ``[0, total)`` into ``threads`` contiguous ranges and run ``work`` on each."""
    step = -(-total // threads)
    if threads == 1:
        work(0, total)
        return
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda s: work(s, min(s + step, total)), range(0, total, step)))


# -- raw limits ------------------------------------------------------------------------------
def raw_memcpy(cfg: Config, threads: int) -> tuple[Operation, Operation]:
    src = torch.ones(_buffer_of(_empty_model(cfg))[1], dtype=torch.uint8)
    dst = torch.zeros_like(src)

    def work(start: int, end: int) -> None:
        for s in range(start, end, CHUNK):  # ctypes releases the GIL around memmove
            ctypes.memmove(_address(dst) + s, _address(src) + s, min(CHUNK, end - s))

    return lambda: _parallel(threads, work, src.numel()), _noop


def raw_read(cfg: Config, threads: int, *, hashed: bool = False) -> tuple[Operation, Operation]:
    """Read the file into memory; ``hashed``: each MiB hashed (xxh3-64) as it lands, the
    ceiling of a verified load (1 MiB is statevault's verified-read chunk, still in L2)."""
    import xxhash

    path = cfg.files["safetensors"]
    size = os.path.getsize(path)
    dst = torch.zeros(size, dtype=torch.uint8)
    view = memoryview((ctypes.c_ubyte * size).from_address(_address(dst))).cast("B")
    fd = os.open(path, os.O_RDONLY)
    step = (1 << 20) if hashed else CHUNK

    def work(start: int, end: int) -> None:
        assert dst.numel() == size  # the closure keeps dst (the memory behind view) alive
        hasher = xxhash.xxh3_64()
        for s in range(start, end, step):
            chunk = view[s : min(s + step, end)]
            os.preadv(fd, [chunk], s)
            if hashed:
                hasher.update(chunk)

    return lambda: _parallel(threads, work, size), _noop


def raw_write(cfg: Config, fsync: bool) -> tuple[Operation, Operation]:
    size = os.path.getsize(cfg.files["safetensors"])
    src = torch.ones(size, dtype=torch.uint8)
    view = memoryview((ctypes.c_ubyte * size).from_address(_address(src))).cast("B")

    def write() -> None:
        assert src.numel() == size  # the closure keeps src (the memory behind view) alive
        fd = os.open(cfg.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for s in range(0, size, CHUNK):
                os.write(fd, view[s : s + CHUNK])
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    return write, lambda: _unlink(cfg.out)


def _unlink(path: str) -> None:
    """Remove the last save's file and flush all dirty pages, untimed.

    Without the sync, each save case would start with the previous cases' gigabytes still
    being written back, and whichever ran later would be throttled harder.
    """
    if os.path.exists(path):
        os.unlink(path)
    os.sync()
    gc.collect()


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- loading into an existing model ----------------------------------------------------------
def torch_load_into(cfg: Config, mmap: bool) -> tuple[Operation, Operation]:
    model = _empty_model(cfg)

    def run() -> None:
        state = torch.load(cfg.files["torch"], mmap=mmap, weights_only=True)
        model.load_state_dict(state)

    return run, _noop


def safetensors_load_file_into(cfg: Config) -> tuple[Operation, Operation]:
    from safetensors.torch import load_file

    model = _empty_model(cfg)
    return lambda: model.load_state_dict(load_file(cfg.files["safetensors"])), _noop


def safetensors_load_model(cfg: Config) -> tuple[Operation, Operation]:
    from safetensors.torch import load_model

    model = _empty_model(cfg)
    return lambda: load_model(model, cfg.files["safetensors"]), _noop


def statevault_load_into(cfg: Config, verify: bool) -> tuple[Operation, Operation]:
    import statevault

    model = _empty_model(cfg)
    return lambda: statevault.load_into(model, cfg.files["statevault"], verify=verify), _noop


def statevault_verify(cfg: Config) -> tuple[Operation, Operation]:
    import statevault

    return lambda: statevault.verify(cfg.files["statevault"]), _noop


# -- building a model and loading it ---------------------------------------------------------
def build_torch(cfg: Config) -> tuple[Operation, Operation]:
    def run() -> nn.Module:
        model = build(cfg.kind, cfg.model)
        model.load_state_dict(torch.load(cfg.files["torch"], weights_only=True))
        return model

    return run, _noop


def build_torch_meta_assign(cfg: Config) -> tuple[Operation, Operation]:
    def run() -> nn.Module:
        with torch.device("meta"):
            model = build(cfg.kind, cfg.model)  # note: its non-persistent buffers stay on meta
        state = torch.load(cfg.files["torch"], mmap=True, weights_only=True)
        model.load_state_dict(state, assign=True)
        return model

    return run, _noop


def build_safetensors(cfg: Config) -> tuple[Operation, Operation]:
    from safetensors.torch import load_model

    def run() -> nn.Module:
        model = build(cfg.kind, cfg.model)
        load_model(model, cfg.files["safetensors"])
        return model

    return run, _noop


def build_statevault(cfg: Config) -> tuple[Operation, Operation]:
    import statevault

    def run() -> nn.Module:
        return statevault.build_model(lambda: build(cfg.kind, cfg.model), cfg.files["statevault"])

    return run, _noop


# -- saving --------------------------------------------------------------------------------
def _saved_state(cfg: Config) -> dict[str, torch.Tensor]:
    state = _empty_model(cfg).state_dict()
    with torch.no_grad():
        for tensor in state.values():
            tensor.fill_(1)
    return state


def torch_save(cfg: Config, fsync: bool) -> tuple[Operation, Operation]:
    state = _saved_state(cfg)

    def run() -> None:
        torch.save(state, cfg.out)
        if fsync:
            _fsync_path(cfg.out)

    return run, lambda: _unlink(cfg.out)


def safetensors_save(cfg: Config, fsync: bool) -> tuple[Operation, Operation]:
    from safetensors.torch import save_file

    state = _saved_state(cfg)

    def run() -> None:
        save_file(state, cfg.out)
        if fsync:
            _fsync_path(cfg.out)

    return run, lambda: _unlink(cfg.out)


def statevault_save(cfg: Config, fsync: bool) -> tuple[Operation, Operation]:
    import statevault

    state = _saved_state(cfg)
    return lambda: statevault.save(state, cfg.out, fsync=fsync), lambda: _unlink(cfg.out)


# -- cold: the file's pages dropped before each run ------------------------------------------
def drop_pages(path: str) -> None:
    """Evict ``path``'s pages from the page cache (clean ones go at once; dirty ones are
    synced first), so the next read comes from the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def cold(
    case: Callable[[Config], tuple[Operation, Operation]], library: str
) -> Callable[[Config], tuple[Operation, Operation]]:
    """``case`` with the file of ``library`` ("torch", "safetensors", "statevault") dropped
    from the page cache by each (untimed) reset."""

    def setup(cfg: Config) -> tuple[Operation, Operation]:
        operation, reset = case(cfg)

        def reset_cold() -> None:
            reset()
            drop_pages(cfg.files[library])

        return operation, reset_cold

    return setup


def raw_sequential_read(cfg: Config) -> tuple[Operation, Operation]:
    """One thread reading the file front to back in 8 MiB requests: the disk's sequential rate."""
    path = cfg.files["safetensors"]
    buffer = bytearray(CHUNK)

    def run() -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            while os.readv(fd, [buffer]):
                pass
        finally:
            os.close(fd)

    return run, _noop


def raw_parallel_read(cfg: Config) -> tuple[Operation, Operation]:
    """Two threads, each reading its half of the file front to back in 8 MiB requests.

    Beside the one-thread row, because the disk here often serves two streams faster than
    one (a 512 MiB file, cold, medians of 3: 0.48 s against 0.91 s), though not for every
    file: the sequential row alone would flatter any reader that keeps two requests in flight.
    """
    path = cfg.files["safetensors"]
    size = os.path.getsize(path)

    def work(start: int, end: int) -> None:
        buffer = memoryview(bytearray(CHUNK))
        fd = os.open(path, os.O_RDONLY)
        try:
            while start < end:
                got = os.preadv(fd, [buffer[: min(CHUNK, end - start)]], start)
                if got <= 0:
                    break
                start += got
        finally:
            os.close(fd)

    return lambda: _parallel(2, work, size), _noop


CASES: dict[str, Callable[[Config], tuple[Operation, Operation]]] = {
    "raw memcpy, 1 thread": lambda c: raw_memcpy(c, 1),
    "raw memcpy, 2 threads": lambda c: raw_memcpy(c, 2),
    "raw page-cache read, 1 thread": lambda c: raw_read(c, 1),
    "raw page-cache read, 2 threads": lambda c: raw_read(c, 2),
    "raw os.write": lambda c: raw_write(c, False),
    "raw os.write + fsync": lambda c: raw_write(c, True),
    "raw page-cache read + xxh3, 2 threads": lambda c: raw_read(c, 2, hashed=True),
    "torch.load + load_state_dict": lambda c: torch_load_into(c, False),
    "torch.load(mmap) + load_state_dict": lambda c: torch_load_into(c, True),
    "safetensors load_file + load_state_dict": safetensors_load_file_into,
    "safetensors load_model": safetensors_load_model,
    "statevault load_into": lambda c: statevault_load_into(c, True),
    "statevault load_into (verify=False)": lambda c: statevault_load_into(c, False),
    "Model() + torch.load + load_state_dict": build_torch,
    "Model() + safetensors load_model": build_safetensors,
    "meta Model + torch.load(mmap) + assign": build_torch_meta_assign,
    "statevault build_model": build_statevault,
    "torch.save": lambda c: torch_save(c, False),
    "torch.save + fsync": lambda c: torch_save(c, True),
    "safetensors save_file": lambda c: safetensors_save(c, False),
    "safetensors save_file + fsync": lambda c: safetensors_save(c, True),
    "statevault save (fsync=False)": lambda c: statevault_save(c, False),
    "statevault save (fsync=True)": lambda c: statevault_save(c, True),
    "raw sequential read, cold": cold(raw_sequential_read, "safetensors"),
    "raw read, 2 threads (file halves), cold": cold(raw_parallel_read, "safetensors"),
    "torch.load(mmap) + load_state_dict, cold": cold(lambda c: torch_load_into(c, True), "torch"),
    "safetensors load_model, cold": cold(safetensors_load_model, "safetensors"),
    "statevault load_into, cold": cold(lambda c: statevault_load_into(c, True), "statevault"),
    "statevault load_into (verify=False), cold": cold(
        lambda c: statevault_load_into(c, False), "statevault"
    ),
    "statevault verify, cold": cold(statevault_verify, "statevault"),
}


def run_case(name: str, cfg: Config, runs: int) -> dict[str, Any]:
    """Set up ``name``, measure its peak memory on a first run, then time it ``runs`` times.

    Memory is measured first because the allocator keeps freed memory for reuse: after one
    run, a second would show almost no growth. The first run also warms the page cache.
    """
    from bench.measure import peak_during, timed

    operation, reset = CASES[name](cfg)
    reset()
    peak = peak_during(operation)
    times = []
    for _ in range(runs):
        reset()
        times.append(timed(operation))
    reset()
    return {"times": times, "anon": peak.anon, "file": peak.file}
