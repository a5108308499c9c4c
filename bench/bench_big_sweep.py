"""The 10,044-run experiments/big_sweep.yaml (the dma_sweep design with 31
replicates), timed end to end as a user runs it: `kdumpsim experiment` with
--workers defaulting to the cores available. Target: under 5 minutes on 2
cores. Not part of `make bench` (it takes minutes): `make bench-big`."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from common import PY, ROOT, machine


def main() -> dict:
    d = Path(tempfile.mkdtemp(prefix="kdumpsim-big-"))
    try:
        t = time.perf_counter()
        subprocess.run([PY, "-m", "kdumpsim", "experiment", "experiments/big_sweep.yaml", "--no-progress",
                        "--out", str(d / "out")], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        secs = time.perf_counter() - t
        import pyarrow.parquet as pq
        n = pq.read_metadata(d / "out" / "results.parquet").num_rows
    finally:
        shutil.rmtree(d, ignore_errors=True)
    print(f"big_sweep: {n} runs in {secs / 60:.1f} min = {n / secs:.1f} runs/s (target < 5 min on 2 cores)")
    return {"runs": n, "seconds": secs}


if __name__ == "__main__":
    print(machine())
    main()
