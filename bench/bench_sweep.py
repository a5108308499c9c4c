"""Sweeps: runs per second of the dma_sweep experiment with 1 worker, with 2
local workers, and on a 2-worker Dask cluster on loopback (a real scheduler
and workers started as processes). To keep the benchmark short it runs
dma_sweep.yaml with 2 replicates per point instead of the file's count."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from common import PY, ROOT, machine

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


def dask_cluster(d: Path) -> tuple[list[subprocess.Popen], str]:
    sched_file = d / "scheduler.json"
    procs = [subprocess.Popen([str(VENV_BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--no-dashboard", "--scheduler-file", str(sched_file)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    deadline = time.time() + 60
    while not sched_file.exists() and time.time() < deadline:
        time.sleep(0.2)
    for _ in range(2):
        procs.append(subprocess.Popen([str(VENV_BIN / "dask"), "worker", "--scheduler-file", str(sched_file),
                                       "--nthreads", "1", "--nworkers", "1", "--no-dashboard"],
                                      cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(5)
    return procs, str(sched_file)


def main() -> dict:
    d = Path(tempfile.mkdtemp(prefix="kdumpsim-sweep-"))
    try:
        exp = experiment_file(d)
        base = [PY, "-m", "kdumpsim", "experiment", str(exp), "--no-progress"]
        t1 = timed(base + ["--workers", "1", "--out", str(d / "w1")])
        t2 = timed(base + ["--workers", "2", "--out", str(d / "w2")])
        procs, sched = dask_cluster(d)
        try:
            td = timed(base + ["--executor", "dask", "--scheduler", sched, "--out", str(d / "dask")])
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(timeout=30)
        n = runs_in(d / "w1")
    finally:
        shutil.rmtree(d, ignore_errors=True)
    r1, r2, rd = n / t1, n / t2, n / td
    print(f"sweep: dma_sweep.yaml x {REPLICATES} replicates = {n} runs")
    print(f"  1 worker {r1:.1f} runs/s; 2 local workers {r2:.1f} runs/s = {r2 / r1:.2f}x (target >= 1.8x); "
          f"2-worker Dask on loopback {rd:.1f} runs/s = {rd / r1:.2f}x")
    return {"runs": n, "w1": r1, "w2": r2, "dask": rd, "speedup2": r2 / r1, "speedup_dask": rd / r1}


if __name__ == "__main__":
    print(machine())
    main()
