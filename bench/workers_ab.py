"""A/B of the read threads: a thread pool started per call vs the engine's kept ``workers``.

``python -m bench.workers_ab [--mib 160] [--rounds 30]``: one process loads the same
LLM-like state into an existing model (warm page cache) with each variant in turn, verified
and not, round after round, so load drifts on a shared machine hit both alike. Prints the
minimum (the quiet-machine cost), the first quartile and the median per variant. "per call"
is the previous reader: a ``ThreadPoolExecutor`` started and joined inside every call.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _per_call(tasks: Sequence[Callable[[], Any]], threads: int, **_: Any) -> list[Any]:
    """The previous way: a pool of ``threads`` started and joined for this one call."""
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="statevault-read") as pool:
        return [future.result() for future in [pool.submit(task) for task in tasks]]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.workers_ab", description=__doc__)
    parser.add_argument("--mib", type=int, default=160)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))

    import statevault
    from bench.cases import Config, _empty_model
    from bench.models import build, llm_config
    from statevault.engine import workers

    config = llm_config(args.mib << 20)
    kept = workers.run
    with tempfile.TemporaryDirectory(prefix="statevault-workers-ab-") as tmp:
        path = str(Path(tmp) / "state.safetensors")
        statevault.save(build("llm", config), path)
        model = _empty_model(Config("llm", config, {}, ""))

        def variant(run: Callable[..., Any], verify: bool) -> Callable[[], None]:
            def load() -> None:
                workers.run = run  # type: ignore[assignment]
                try:
                    statevault.load_into(model, path, verify=verify)
                finally:
                    workers.run = kept  # type: ignore[assignment]

            return load

        cases = {
            "verified, pool per call": variant(_per_call, True),
            "verified, kept workers": variant(kept, True),
            "verify=False, pool per call": variant(_per_call, False),
            "verify=False, kept workers": variant(kept, False),
        }
        for case in cases.values():
            case()  # page cache and first-call imports
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.rounds):
            for name, case in cases.items():
                start = time.perf_counter()
                case()
                times[name].append(time.perf_counter() - start)
    print(f"warm load_into of {args.mib} MiB, {args.rounds} alternating rounds (ms)")
    for name, values in times.items():
        values.sort()
        print(
            f"  {name:<28} min {1000 * values[0]:7.2f}  q1 {1000 * values[len(values) // 4]:7.2f}"
            f"  median {1000 * statistics.median(values):7.2f}"
        )


if __name__ == "__main__":
    main()
