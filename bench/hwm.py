"""Run `python -m MOD ARGS` or `python -c CODE ARGS` and, at exit, write this
process's own peak RSS (VmHWM of its own mm) to the file named by $KDUMPSIM_HWM.

getrusage's ru_maxrss cannot measure a child alone: exec records the old mm's
high-water mark into the new process's maxrss (fs/exec.c exec_mmap,
setmax_mm_hiwater_rss), and a forked mm starts at its parent's, so every child
of a big bench process reads at least the parent's peak."""

from __future__ import annotations

import atexit
import os
import runpy
import sys


def _write_hwm() -> None:
    with open("/proc/self/status") as status:
        kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    with open(os.environ["KDUMPSIM_HWM"], "w") as out:
        out.write(str(kib * 1024))


def main() -> None:
    atexit.register(_write_hwm)
    flag, target, *rest = sys.argv[1:]
    if flag == "-m":
        sys.argv = [target, *rest]
        runpy.run_module(target, run_name="__main__", alter_sys=True)
    elif flag == "-c":
        sys.argv = ["-c", *rest]
        exec(compile(target, "<string>", "exec"), {"__name__": "__main__"})
    else:
        raise SystemExit(f"hwm.py: expected -m MODULE or -c CODE, got {flag!r}")


if __name__ == "__main__":
    main()
