"""Sweeps: runs per second of the dma_sweep experiment with 1 worker, with 2
local workers, and on 1- and 2-worker Dask clusters on loopback (a real
scheduler and workers started as processes). To keep the benchmark short it runs
dma_sweep.yaml with 2 replicates per point instead of the file's count.

Two rates each: end to end (the command's wall time, with its fixed ~3 s of
imports, the summary and the plots, which no worker count shortens), and
the simulation phase the workers share (the manifest's
seconds_this_session: from starting the workers to the last saved chunk)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from common import PY, ROOT, machine

from kdumpsim.sweep.executors import WORKER_ENV

VENV_BIN = Path(PY).parent
REPLICATES = 2


def experiment_file(d: Path) -> Path:
    text = (ROOT / "experiments/dma_sweep.yaml").read_text()
    text = re.sub(r"(?m)^replicates: \d+", f"replicates: {REPLICATES}", text)
    text = text.replace("model: models/", f"model: {ROOT}/models/")
    path = d / "dma_sweep_bench.yaml"
    path.write_text(text)
    return path


def timed(argv: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(argv, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def runs_in(out: Path) -> int:
    import pyarrow.parquet as pq
    return pq.read_metadata(out / "results.parquet").num_rows


def sweep_seconds(out: Path) -> float:
    import json
    return float(json.loads((out / "manifest.json").read_text())["seconds_this_session"])


def dask_cluster(d: Path, workers: int) -> tuple[list[subprocess.Popen], str]:
    sched_file = d / f"scheduler-{workers}.json"
    procs = [subprocess.Popen([str(VENV_BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--no-dashboard", "--scheduler-file", str(sched_file)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    deadline = time.time() + 60
    while not sched_file.exists() and time.time() < deadline:
        time.sleep(0.2)
    env = {**os.environ, **WORKER_ENV}        # as the README starts workers for kdumpsim
    for _ in range(workers):
        procs.append(subprocess.Popen([str(VENV_BIN / "dask"), "worker", "--scheduler-file", str(sched_file),
                                       "--nthreads", "1", "--nworkers", "1", "--no-dashboard"],
                                      cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(5)
    return procs, str(sched_file)


def on_dask(d: Path, base: list[str], workers: int) -> float:
    """The sweep's wall time on a fresh `workers`-worker cluster; its output in d/dask<workers>."""
    procs, sched = dask_cluster(d, workers)
    try:
        return timed(base + ["--executor", "dask", "--scheduler", sched, "--out", str(d / f"dask{workers}")])
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)


def main() -> dict:
    d = Path(tempfile.mkdtemp(prefix="kdumpsim-sweep-"))
    try:
        exp = experiment_file(d)
        base = [PY, "-m", "kdumpsim", "experiment", str(exp), "--no-progress"]
        t1 = timed(base + ["--workers", "1", "--out", str(d / "w1")])
        t2 = timed(base + ["--workers", "2", "--out", str(d / "w2")])
        td1 = on_dask(d, base, 1)
        td = on_dask(d, base, 2)
        n = runs_in(d / "w1")
        s1, s2, sd1, sd = (sweep_seconds(d / k) for k in ("w1", "w2", "dask1", "dask2"))
    finally:
        shutil.rmtree(d, ignore_errors=True)
    r1, r2, rd1, rd = n / t1, n / t2, n / td1, n / td
    print(f"sweep: dma_sweep.yaml x {REPLICATES} replicates = {n} runs")
    print(f"  end to end: 1 worker {r1:.1f} runs/s; 2 local workers {r2:.1f} runs/s = {r2 / r1:.2f}x; "
          f"2-worker Dask on loopback {rd:.1f} runs/s = {rd / r1:.2f}x (1-worker Dask {rd1:.1f} runs/s)")
    print(f"  simulation phase: 1 worker {n / s1:.1f} runs/s; 2 local workers {n / s2:.1f} runs/s = {s1 / s2:.2f}x "
          f"(target >= 1.8x); 2-worker Dask {n / sd:.1f} runs/s = {s1 / sd:.2f}x")
    print(f"  Dask's scaling, simulation phase: 1-worker Dask {n / sd1:.1f} runs/s, 2 workers {sd1 / sd:.2f}x that "
          f"(target >= 1.8x; on this machine the scheduler and the sweep's own process share the 2 cores)")
    return {"runs": n, "w1": r1, "w2": r2, "dask": rd, "dask1": rd1, "speedup2": r2 / r1, "speedup_dask": rd / r1,
            "sweep_speedup2": s1 / s2, "sweep_speedup_dask": s1 / sd, "dask_scaling": sd1 / sd}


if __name__ == "__main__":
    print(machine())
    main()
