"""Shared helpers for the benchmark scripts: timing, peak memory of a child
process, machine description. Benchmarks report ratios against a baseline
measured in the same run, because machines are noisy."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"


def best_of(n: int, fn) -> float:
    """Best wall time of n calls (the least disturbed by the rest of the machine)."""
    best = float("inf")
    for _ in range(n):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def child(argv: list[str]) -> tuple[float, int]:
    """Run a Python command ([PY, "-m"|"-c", ...]); (wall seconds, peak RSS bytes of
    that child alone, as hwm.py reads it: ru_maxrss would carry this process's peak over)."""
    assert argv[0] == PY and argv[1] in ("-m", "-c"), argv
    with tempfile.NamedTemporaryFile(prefix="kdumpsim-hwm-") as hwm:
        env = {**os.environ, "KDUMPSIM_HWM": hwm.name}
        t = time.perf_counter()
        proc = subprocess.run([PY, str(ROOT / "bench" / "hwm.py"), *argv[1:]], cwd=ROOT,
                              stdout=subprocess.DEVNULL, env=env)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            raise SystemExit(f"benchmark command failed: {' '.join(argv)}")
        return wall, int(Path(hwm.name).read_text())
