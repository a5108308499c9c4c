"""Purgatory's shortcut (resume the sha256 from the state kept for the first
chunk something wrote) gives the same outcome, digest check and timeline as
hashing every byte as it is in RAM."""

from __future__ import annotations

import json

import pytest

from kdumpsim.crash import purgatory
from kdumpsim.measure import simulate
from kdumpsim.measure.report import build_report, dumps


def _stale(start: str, lo: int, hi: int) -> str:
    return "devices=" + json.dumps([{"name": "fw0", "kind": "cyclic", "bus": "pcie0", "buffer_size": "64K",
                                     "chunk": "4K", "period": "1ms", "start": start,
                                     "placement": {"mode": "stale", "start": lo, "end": hi}}])


# The segments' first 64 KiB: kexec_load (sorted by address) hashes the (8M)
# initrd from ~1 ms, the kernel from ~32 ms; kexec_file_load (in load order) the
# kernel from ~0 ms, the initrd from ~250 ms.
@pytest.mark.parametrize("method, segment, start, expect", [
    ("kexec_load", "kernel", "-1ms", "mismatch"), ("kexec_load", "initrd", "2ms", "ok"),
    ("kexec_load", "kernel", "20ms", "mismatch"), ("kexec_load", "kernel", "150ms", "ok"),
    ("kexec_file_load", "initrd", "-1ms", "mismatch"), ("kexec_file_load", "kernel", "2ms", "ok"),
    ("kexec_file_load", "initrd", "100ms", "mismatch"), ("kexec_file_load", "initrd", "300ms", "ok")])
def test_shortcut_equals_hashing_every_byte(small_modern, monkeypatch, method, segment, start, expect):
    seg = simulate(small_modern("devices=[]", f"kexec.method={method}"), 0).image.segment(segment)
    cfg = small_modern(_stale(start, seg.start, seg.start + 64 * 1024), f"kexec.method={method}")
    fast = simulate(cfg, 3)
    monkeypatch.setattr(purgatory, "written_since_load", lambda mem, addr, size: True)
    slow = simulate(cfg, 3)
    assert fast.purgatory_result == slow.purgatory_result == expect
    assert dumps(build_report(fast)) == dumps(build_report(slow))
    assert [(e.time, e.kind) for e in fast.trace] == [(e.time, e.kind) for e in slow.trace]


def test_a_clean_load_passes_without_reading_the_segments(small_modern, monkeypatch):
    from kdumpsim.machine.ram import PhysicalMemory
    reads = []
    real = PhysicalMemory.iter_read
    monkeypatch.setattr(PhysicalMemory, "iter_read", lambda self, *a: reads.append(a) or real(self, *a))
    run = simulate(small_modern("devices=[]"), 0)
    assert run.purgatory_result == "ok"
    segs = [(s.start, s.end) for s in run.image.segments if s.hashed]
    hashing = [r for r in reads if len(r) > 2 and r[2] is not None and r[2] <= run.phase["purgatory_end"]
               and any(s <= r[0] < e for s, e in segs)]
    assert reads and hashing == []        # every chunk as loaded: the kept states, not RAM, give the digest
