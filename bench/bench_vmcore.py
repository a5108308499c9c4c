"""vmcore: MB/s writing the vmcore of an 8 GiB machine against `dd bs=1M`
writing the same number of bytes to the same disk, and the writer's peak
memory (in a fresh process). Both include the flush to disk (conv=fsync for
dd, os.fsync for ours), so the page cache does not flatter either. dd's
input is `yes` (non-zero bytes): virtual disks here write zero blocks far
faster than data, which would flatter `dd if=/dev/zero` (also printed)."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

from common import PY, ROOT, child, machine

WRITER = """
import os, sys, time
from kdumpsim.config import load_model
from kdumpsim.sim import simulate
from kdumpsim.vmcore import write_vmcore
run = simulate(load_model("models/modern-x86_64.yaml"), 1)
t = time.perf_counter()
n = write_vmcore(run, sys.argv[1])
fd = os.open(sys.argv[1], os.O_RDONLY); os.fsync(fd); os.close(fd)
print(n, time.perf_counter() - t)
"""


def main(directory: str | None = None) -> dict:
    d = Path(directory or tempfile.mkdtemp(prefix="kdumpsim-bench-", dir=ROOT))
    out, ddout = d / "bench.vmcore", d / "dd.bin"
    try:
        proc = subprocess.run([PY, "-c", WRITER, str(out)], cwd=ROOT, capture_output=True, text=True, check=True)
        size, secs = proc.stdout.split()
        size, secs = int(size), float(secs)
        _, rss = child([PY, "-c", WRITER, str(out)])
        out.unlink()
        count = size // 2**20
        t = time.perf_counter()
        subprocess.run(f"yes | dd of={ddout} bs=1M count={count} iflag=fullblock conv=fsync",
                       shell=True, check=True, capture_output=True)
        dd = time.perf_counter() - t
        ddout.unlink()
        t = time.perf_counter()
        subprocess.run(["dd", "if=/dev/zero", f"of={ddout}", "bs=1M", f"count={count}", "conv=fsync"],
                       check=True, capture_output=True)
        dd_zero = time.perf_counter() - t
    finally:
        for f in (out, ddout):
            f.unlink(missing_ok=True)
        if directory is None:
            os.rmdir(d)
    ours, theirs = size / secs / 1e6, count * 2**20 / dd / 1e6
    zeros = count * 2**20 / dd_zero / 1e6
    print(f"vmcore: {size / 2**30:.2f} GiB written in {secs:.1f} s = {ours:,.0f} MB/s; "
          f"dd bs=1M (data from yes) {theirs:,.0f} MB/s: ratio {ours / theirs:.2f}x (target >= 0.7x); "
          f"dd if=/dev/zero {zeros:,.0f} MB/s; peak memory {rss / 2**20:.0f} MiB (target < 200 MiB)")
    return {"mb_s": ours, "dd_mb_s": theirs, "ratio": ours / theirs, "dd_zero_mb_s": zeros, "peak_rss": rss}


if __name__ == "__main__":
    print(machine())
    main()
