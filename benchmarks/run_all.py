"""Run every benchmark and print the tables the README shows, one after the other.

    python benchmarks/run_all.py            # all of them (several minutes)
    python benchmarks/run_all.py hot-path   # just some: analysis, hot-path, long-transaction,
                                            # seed-scenario, deadlocks, topologies

Each benchmark runs in its own process (so one's imports and caches do not colour the
next) and starts its own throwaway PostgreSQL unless ``SAFEDDL_TEST_DSN`` is set.
Nothing here asserts a time: the numbers are measured on the machine at hand.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

BENCHMARKS: dict[str, list[str]] = {
    "analysis": [sys.executable, str(HERE / "bench_analysis.py")],
    "hot-path": [sys.executable, str(HERE / "bench_hot_path.py")],
    "long-transaction": [sys.executable, str(HERE / "bench_long_transaction.py")],
    "seed-scenario": [sys.executable, "-m", "safeddl", "demo"],
    "deadlocks": [sys.executable, str(HERE / "bench_deadlocks.py")],
    "topologies": [sys.executable, str(HERE / "bench_topologies.py")],
    "large-statements": [sys.executable, str(HERE / "bench_large_statements.py")],
}


def main(argv: list[str]) -> int:
    chosen = argv or list(BENCHMARKS)
    unknown = [name for name in chosen if name not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}",
              file=sys.stderr)
        return 2
    failed = []
    for name in chosen:
        print(f"\n===== {name} =====\n", flush=True)
        if subprocess.run(BENCHMARKS[name], check=False).returncode != 0:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
