"""Has a loaded segment changed since kexec loaded it? The capture kernel's
own question when it runs (is my image, initrd, command line still what
purgatory checked?) and the metrics' question afterwards.

Only devices write into a loaded segment after the load, so only pages a
device wrote are compared: everything else equals the load by construction.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from kdumpsim import defaults as D
from kdumpsim.kexec.load import KEXEC_LOAD_TIME
from kdumpsim.machine.ram import PAGE_SHIFT, Delta

if TYPE_CHECKING:
    from kdumpsim.crash.run import CrashRun

PAGE = D.PAGE_SIZE


def diff_bytes(a: bytes | memoryview, b: bytes | memoryview) -> int:
    """How many bytes differ between two equal-length buffers."""
    if a == b:
        return 0
    n = min(len(a), len(b))
    return int(np.count_nonzero(np.frombuffer(a, np.uint8, n) != np.frombuffer(b, np.uint8, n)))


def device_deltas(run: CrashRun, pfn: int, after: int, until: int) -> list[Delta]:
    """Writes by a DMA device into page `pfn` in (after, until]."""
    names = run.device_names
    return run.machine.memory.deltas_of(pfn, lambda w: w.actor in names and after < w.time <= until)


def segment_changes(run: CrashRun, name: str, at: int) -> Iterator[tuple[int, list[Delta]]]:
    """(bytes changed, the device writes behind it) per page of segment `name`
    that differs at time `at` from what kexec loaded."""
    seg = run.image.segment(name)
    if seg is None:
        return
    mem = run.machine.memory
    relocated = seg.sources is not None   # 2004: DMA into a source page arrives via the copy
    # Pages only a device could have changed since the load (all written pages when relocated).
    pfns = (mem.touched_in(seg.start, seg.end) if relocated
            else mem.written_by(run.device_names, KEXEC_LOAD_TIME, seg.start, seg.end))
    for pfn in pfns:
        if not relocated and not device_deltas(run, pfn, KEXEC_LOAD_TIME, at):
            continue
        page_start = pfn << PAGE_SHIFT
        lo, hi = max(seg.start, page_start), min(seg.end, page_start + PAGE)
        expected = seg.data[lo - seg.start: hi - seg.start]
        expected += bytes((hi - lo) - len(expected))
        actual = mem.page(pfn, at)[lo - page_start: hi - page_start]
        n = diff_bytes(expected, actual)
        if n:
            yield n, device_deltas(run, pfn, 0, at)


def changed_segments(run: CrashRun, names: tuple[str, ...], at: int) -> dict[str, int]:
    """Bytes changed per segment (only those that changed)."""
    out = {}
    for name in names:
        n = sum(b for b, _ in segment_changes(run, name, at))
        if n:
            out[name] = n
    return out
