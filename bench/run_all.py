"""`make bench`: every benchmark, each as a ratio against a baseline measured
in the same run on the same machine (bench_baseline: against commit dd56f58).
The 10,000-run big_sweep is timed apart: `make bench-big`. Figures go into the README's
Performance section by hand, with the machine line printed first."""

from __future__ import annotations

import sys

import bench_baseline
import bench_collector
import bench_crash
import bench_engine
import bench_sha256
import bench_sweep
import bench_vmcore
from common import machine


def main() -> int:
    print(f"machine: {machine()}\n")
    for mod in (bench_baseline, bench_engine, bench_crash, bench_collector, bench_sweep, bench_vmcore, bench_sha256):
        mod.main()
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
