"""``python -m bench [--quick]``: run every case in its own subprocess and print the tables.

Each row is the median of ``--runs`` timed repetitions inside one fresh process, plus one
more repetition with memory sampling. Saves without fsync show the fastest of at least 5
runs instead (fresh-file writes swing 3-8x from run to run with the writeback in flight;
the tables say so). The fresh-process build rows start a new interpreter per run. Ratios are computed between rows of the same run, so
a noisy machine shifts all of them together: "vs best peer" is the fastest non-statevault
row's time divided by ours (above 1 means we are faster), "vs raw" is the raw limit's time
divided by ours (1.0 would be running at the hardware ceiling measured here).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench.cases import Config, run_case
from bench.fresh import BUILDS, build_times, import_times, render_imports
from bench.mmap_ab import measure as measure_mapped
from bench.mmap_ab import render as render_mapped
from bench.mmap_ab import write_state
from bench.models import build, llm_config, state_bytes
from bench.tables import (
    FASTEST_OF,
    HEADLINE_END,
    HEADLINE_START,
    MAPPED_END,
    MAPPED_START,
    MIB,
    Group,
    headline,
    render,
    write_markdown,
)

ROOT = Path(__file__).resolve().parent.parent


LOAD = (
    "torch.load + load_state_dict",
    "torch.load(mmap) + load_state_dict",
    "safetensors load_file + load_state_dict",
    "safetensors load_model",
    "statevault load_into",
    "statevault load_into (verify=False)",
)
SMALL_LOAD = (
    "raw page-cache read, 2 threads",
    "torch.load + load_state_dict",
    "safetensors load_model",
    "statevault load_into",
    "statevault load_into (verify=False)",
)
SAVE = ("raw os.write", "torch.save", "safetensors save_file", "statevault save (fsync=False)")
SAVE_FSYNC = (
    "raw os.write + fsync",
    "torch.save + fsync",
    "safetensors save_file + fsync",
    "statevault save (fsync=True)",
)
COLD = (
    "raw sequential read, cold",
    "raw read, 2 threads (file halves), cold",
    "torch.load(mmap) + load_state_dict, cold",
    "safetensors load_model, cold",
    "statevault load_into, cold",
    "statevault load_into (verify=False), cold",
    "statevault verify, cold",
)
BUILD = (
    "Model() + torch.load + load_state_dict",
    "Model() + safetensors load_model",
    "meta Model + torch.load(mmap) + assign",
    "statevault build_model",
)
RAW = (
    "raw memcpy, 1 thread",
    "raw memcpy, 2 threads",
    "raw page-cache read, 1 thread",
    "raw page-cache read, 2 threads",
    "raw page-cache read + xxh3, 2 threads",
)

GROUPS = (
    Group("Raw limits (LLM-like file)", "llm", RAW, None),
    Group(
        "Load LLM-like state into an existing model",
        "llm",
        ("raw page-cache read, 2 threads", "raw page-cache read + xxh3, 2 threads", *LOAD),
        "raw page-cache read, 2 threads",
    ),
    Group(
        "Load LLM-like state, cold (the file's pages dropped before each run)",
        "llm",
        COLD,
        "raw sequential read, cold",
    ),
    Group("Build model + load (LLM-like)", "llm", BUILD, None, BUILD[0]),
    Group(
        "Build model + load, a fresh process per run (LLM-like)",
        "llm",
        tuple(BUILDS),
        "raw allocate + fill the same bytes",
        fresh=True,
    ),
    Group(
        "Load small tensors, flat ModuleList",
        "flat",
        SMALL_LOAD,
        "raw page-cache read, 2 threads",
        "torch.load + load_state_dict",
    ),
    Group(
        "Load small tensors, nested ModuleLists",
        "nested",
        SMALL_LOAD,
        "raw page-cache read, 2 threads",
    ),
    Group("Save LLM-like state (no fsync)", "llm", SAVE, "raw os.write", fastest=True),
    Group("Save LLM-like state + fsync", "llm", SAVE_FSYNC, "raw os.write + fsync"),
    Group("Save small tensors (no fsync)", "flat", SAVE, "raw os.write", fastest=True),
)


def _prepare(kind: str, model: dict[str, int], directory: Path) -> dict[str, Any]:
    """Write the same state with each library (runs in its own subprocess)."""
    import torch
    from safetensors.torch import save_file

    import statevault

    module = build(kind, model)
    state = module.state_dict()
    files = {
        "torch": str(directory / f"{kind}.pt"),
        "safetensors": str(directory / f"{kind}.st.safetensors"),
        "statevault": str(directory / f"{kind}.sv.safetensors"),
    }
    torch.save(state, files["torch"])
    save_file(state, files["safetensors"])
    statevault.save(module, files["statevault"])
    return {"files": files, "bytes": state_bytes(module), "tensors": len(state)}


def _in_child(conn: Connection, function: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        conn.send(function(*args))
    except BaseException as exc:  # report any failure as a row, keep the benchmark going
        conn.send({"error": f"{type(exc).__name__}: {exc}"})


def _forked(function: Callable[..., Any], *args: Any) -> dict[str, Any]:
    """Run ``function(*args)`` in a fresh forked process and return its result.

    Forking from this process, which has imported torch but never run a tensor op (so no
    thread pools exist yet), gives each case a clean heap without paying ~2 s of torch
    import per case: that is what lets ``--quick`` finish in about a minute.
    """
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_in_child, args=(sender, function, args))
    process.start()
    sender.close()
    try:
        result: dict[str, Any] = receiver.recv()
    except EOFError:
        result = {"error": "worker died"}
    process.join()
    if process.exitcode:
        result.setdefault("error", f"worker exited with status {process.exitcode}")
    return result


def _print_tables(groups: list[Group], prepared: dict[str, Any], results: dict[str, Any]) -> None:
    print(render(groups, prepared, results), flush=True)


def _write_docs(
    args: argparse.Namespace,
    groups: list[Group],
    heading: str,
    prepared: dict[str, Any],
    results: dict[str, Any],
) -> None:
    if args.markdown and (groups or "imports" in results):
        write_markdown(Path(args.markdown), heading, render(groups, prepared, results))
    if args.markdown and "mapped" in results:
        tables = render_mapped(results["mapped"])
        write_markdown(Path(args.markdown), heading, tables, (MAPPED_START, MAPPED_END))
    if args.headline and groups:
        table = headline(groups, prepared, results)
        write_markdown(Path(args.headline), heading, table, (HEADLINE_START, HEADLINE_END))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, about a minute")
    parser.add_argument("--llm-mib", type=int, help="LLM-like state size (default 2048)")
    parser.add_argument("--small-count", type=int, help="Linear layers in the small-tensor nets")
    parser.add_argument("--width", type=int, default=72, help="width of each small Linear")
    parser.add_argument("--runs", type=int, default=3, help="timed repetitions per case")
    parser.add_argument("--dir", help="where to write files (default: a new temp dir)")
    parser.add_argument(
        "--mmap-mib", type=int, help="file loaded by 4 processes at once (default 1024)"
    )
    parser.add_argument("--only", help="run only groups whose title contains this text")
    parser.add_argument("--json", help="also write raw results to this file")
    parser.add_argument("--report", help="print the tables of a --json file again and exit")
    parser.add_argument(
        "--markdown", help="also write the tables into this markdown file's generated section"
    )
    parser.add_argument(
        "--headline", help="also write the one-row-per-case summary into this file's section"
    )
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT / "src"))  # measure this checkout, not an installed copy

    if args.report:
        saved = json.loads(Path(args.report).read_text())
        kinds = set(saved["prepared"])
        groups = [g for g in GROUPS if g.kind in kinds]
        _print_tables(groups, saved["prepared"], saved["results"])
        if "mapped" in saved["results"]:
            print(render_mapped(saved["results"]["mapped"]))
        _write_docs(args, groups, saved.get("heading", ""), saved["prepared"], saved["results"])
        return

    # --quick: sized to finish in about a minute on 2 cores (measured 58 s)
    llm_mib = args.llm_mib or (160 if args.quick else 2048)
    count = args.small_count or (1500 if args.quick else 10000)
    models = {
        "llm": llm_config(llm_mib * MIB),
        "flat": {"count": count, "width": args.width},
        "nested": {"count": count, "width": args.width},
    }
    groups = [g for g in GROUPS if not args.only or args.only.lower() in g.title.lower()]
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="statevault-bench-") as tmp:
        directory = Path(tmp)
        import torch

        import statevault

        heading = (
            f"Run of {time.strftime('%Y-%m-%d')} ({'quick' if args.quick else 'full'} sizes): "
            f"python {platform.python_version()}, torch {torch.__version__}, "
            f"{os.cpu_count()} CPUs, median of {args.runs} runs."
        )
        print(f"# statevault benchmark ({'quick' if args.quick else 'full'})\n")
        print(
            f"{heading} statevault from {Path(statevault.__file__).parent}; files in {directory}\n"
        )
        prepared: dict[str, dict[str, Any]] = {}
        for kind in sorted({g.kind for g in groups}):
            prepared[kind] = _forked(_prepare, kind, models[kind], directory)
            if "error" in prepared[kind]:
                raise SystemExit(f"preparing {kind}: {prepared[kind]['error']}")
        results: dict[str, Any] = {}
        if not args.only or "import" in args.only.lower():
            samples = max(5, args.runs)
            results["imports"] = {"rows": import_times(ROOT / "src", samples), "samples": samples}
            print(render_imports(results["imports"]), flush=True)
        if not args.only or "mmap" in args.only.lower():
            shared = write_state(directory, (args.mmap_mib or (256 if args.quick else 1024)) * MIB)
            results["mapped"] = measure_mapped(
                shared, directory, processes=4, runs=max(3, args.runs)
            )
            shared.unlink()
            print(render_mapped(results["mapped"]), flush=True)
        for group in groups:
            info = prepared[group.kind]
            if group.fresh:
                built = build_times(
                    ROOT / "src",
                    group.kind,
                    models[group.kind],
                    info["bytes"],
                    info["files"],
                    args.runs,
                )
                results.update({group.key(name): row for name, row in built.items()})
                print(render([group], prepared, results, imports=False), flush=True)
                continue
            cfg = Config(group.kind, models[group.kind], info["files"], str(directory / "out"))
            runs = max(FASTEST_OF, args.runs) if group.fastest else args.runs
            for name in group.cases:
                key = group.key(name)
                if key not in results:
                    started = time.perf_counter()
                    row = _forked(run_case, name, cfg, runs)
                    if "times" in row:
                        row["median"] = statistics.median(row["times"])
                    row["wall"] = time.perf_counter() - started
                    results[key] = row
            print(render([group], prepared, results, imports=False), flush=True)
        if args.json:
            document = {
                "models": models,
                "prepared": prepared,
                "results": results,
                "heading": heading,
            }
            Path(args.json).write_text(json.dumps(document, indent=1))
        _write_docs(args, groups, heading, prepared, results)


if __name__ == "__main__":
    main()
