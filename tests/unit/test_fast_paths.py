"""The sweep's fast paths (issue #19) give what the straightforward
computation gives: a run without a trace has the same results row as one
with it, and RAM's pages rebuilt from its write index equal the same pages
replayed byte by byte from the write log."""

from __future__ import annotations

import json
import random

import pytest

from kdumpsim.machine.ram import PAGE_SHIFT, PhysicalMemory
from kdumpsim.measure import simulate
from kdumpsim.measure.record import run_record
from kdumpsim.sweep.design import load_experiment
from kdumpsim.sweep.executors import Chunk, run_chunk


def _replayed(mem: PhysicalMemory, pfn: int, time: int | None) -> bytes:
    """Page `pfn` at `time` the plain way: base content, then every logged write in order."""
    page = bytearray(mem.base_page(pfn))
    start = pfn << PAGE_SHIFT
    for w, data in zip(mem.log, mem._data):
        if (time is None or w.time <= time) and w.addr < start + len(page) and start < w.addr + w.length:
            lo, hi = max(w.addr, start), min(w.addr + w.length, start + len(page))
            page[lo - start:hi - start] = data[lo - w.addr:hi - w.addr]
    return bytes(page)


@pytest.mark.slow
def test_sweep_rows_equal_traced_runs_on_a_sample():
    """run_chunk (no trace, the metrics' shortcuts) against simulate with the
    trace kept, on runs drawn from every device and mechanism of dma_sweep."""
    exp = load_experiment("experiments/dma_sweep.yaml")
    sample = random.Random(19).sample(exp.runs(), 12)
    rows = run_chunk(Chunk(tuple(sample), {p: exp.model_for(p) for p in {r.point for r in sample}}))
    for r, res in zip(sample, rows):
        traced = simulate(exp.model_for(r.point), r.seed)
        assert traced.trace.events, "the plain run keeps its trace"
        assert json.dumps(res.record, sort_keys=True, default=str) == \
            json.dumps(run_record(traced), sort_keys=True, default=str)


def test_pages_from_the_index_equal_the_replayed_log(small_modern):
    cfg = small_modern('devices=[{"name": "nic0", "kind": "cyclic", "bus": "pcie0", "buffer_size": "64K", '
                       '"chunk": "6K", "period": "1ms", "duration": "40ms"}]')
    run = simulate(cfg, 2, trace=False)
    mem = run.machine.memory
    assert not run.trace.events
    device = mem.written_by({"nic0"}, 0, 0, 1 << 62)
    assert device, "the device wrote"
    times = [None, 0, run.phase["purgatory_start"], run.phase["capture_boot_start"]]
    for pfn in device[:24] + mem.touched_in(run.image.segments[0].start, run.image.segments[0].start + 8192):
        for t in times:
            assert bytes(mem.page(pfn, t)) == _replayed(mem, pfn, t), (pfn, t)
        start = pfn << PAGE_SHIFT
        assert mem.read(start + 100, 5000, times[2]) == \
            (_replayed(mem, pfn, times[2]) + _replayed(mem, pfn + 1, times[2]))[100:5100]


def test_base_pages_together_equal_one_by_one(finished_run):
    """The vectorised base content (pattern, struct page array, zero pages)
    equals base_page's, page for page, over every kind of page."""
    mem = finished_run.machine.memory
    k = finished_run.machine.kernel_structs
    rng = random.Random(5)
    pfns = [rng.randrange(mem.ram[-1][1] >> PAGE_SHIFT) for _ in range(3000)]
    pfns += [(o.start >> PAGE_SHIFT) + i for o in mem.overlays for i in range(3)]
    assert k is not None and mem.overlays
    assert [row.tobytes() for row in mem.base_array(pfns)] == [mem.base_page(p) for p in pfns]
    zero = sum(1 for p in pfns if mem.base_page(p) == bytes(4096))
    assert 0 < zero < len(pfns), "both zero and non-zero pages were compared"
