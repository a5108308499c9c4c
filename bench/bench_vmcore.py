"""vmcore: MB/s writing the vmcore of an 8 GiB machine against `dd bs=1M`
writing the same number of bytes to the same disk, and the writer's peak
memory (in a fresh process). Both include the flush to disk (conv=fsync for
dd, os.fsync for ours), so the page cache does not flatter either. The disk
of a shared virtual machine moves by 2-3x between runs, so dd runs just
before and just after ours and the ratio uses their mean; dd fed non-zero
bytes from `yes` through a pipe is printed too."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

from common import PY, ROOT, child, machine

WRITER = """
import os, sys, time
from kdumpsim.config.model import load_model
from kdumpsim.measure import simulate
from kdumpsim.formats.vmcore import write_vmcore
run = simulate(load_model("models/modern-x86_64.yaml"), 1)
t = time.perf_counter()
n = write_vmcore(run, sys.argv[1])
fd = os.open(sys.argv[1], os.O_RDONLY); os.fsync(fd); os.close(fd)
print(n, time.perf_counter() - t)
"""


def dd(path: Path, count: int, source: str) -> float:
    """Seconds for dd bs=1M to write `count` MiB from `source` and flush them."""
    t = time.perf_counter()
    if source == "zero":
        subprocess.run(["dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={count}", "conv=fsync"],
                       check=True, capture_output=True)
    else:
        subprocess.run(f"yes | dd of={path} bs=1M count={count} iflag=fullblock conv=fsync",
                       shell=True, check=True, capture_output=True)
    secs = time.perf_counter() - t
    path.unlink()
    return secs


def main(directory: str | None = None) -> dict:
    d = Path(directory or tempfile.mkdtemp(prefix="kdumpsim-bench-", dir=ROOT))
    out, ddout = d / "bench.vmcore", d / "dd.bin"
    try:
        size = 0
        _, rss = child([PY, "-c", WRITER, str(out)])        # warm-up run, and the peak memory
        size = out.stat().st_size
        out.unlink()
        count = size // 2**20
        before = dd(ddout, count, "zero")                    # the disk moves: bracket ours with dd
        proc = subprocess.run([PY, "-c", WRITER, str(out)], cwd=ROOT, capture_output=True, text=True, check=True)
        secs = float(proc.stdout.split()[1])
        out.unlink()
        after = dd(ddout, count, "zero")
        piped = dd(ddout, count, "yes")
    finally:
        for f in (out, ddout):
            f.unlink(missing_ok=True)
        if directory is None:
            os.rmdir(d)
    ours = size / secs / 1e6
    theirs = count * 2**20 / ((before + after) / 2) / 1e6
    yes = count * 2**20 / piped / 1e6
    print(f"vmcore: {size / 2**30:.2f} GiB written in {secs:.1f} s = {ours:,.0f} MB/s; dd bs=1M if=/dev/zero "
          f"{theirs:,.0f} MB/s (mean of before and after): ratio {ours / theirs:.2f}x (target >= 0.7x); "
          f"dd from `yes` {yes:,.0f} MB/s; peak memory {rss / 2**20:.0f} MiB (target < 200 MiB)")
    return {"mb_s": ours, "dd_mb_s": theirs, "ratio": ours / theirs, "dd_yes_mb_s": yes, "peak_rss": rss}


if __name__ == "__main__":
    print(machine())
    main()
