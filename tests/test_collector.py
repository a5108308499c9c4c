"""The dump collector (issue #15): makedumpfile reads mem_map first, then only
the pages it keeps, in pfn order; what it excludes is no dump damage; DMA into
mem_map before it is read changes what it keeps."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kdumpsim.crash.collector import DL_EXCLUDE_FREE, excluded_classes, struct_page_verdict
from kdumpsim.errors import ConfigError
from kdumpsim.firstkernel import mm as FK
from kdumpsim.measure import simulate
from kdumpsim.measure.metrics import truth_page
from kdumpsim.measure.record import run_record

MiB = 1 << 20
PAGE = 4096


def ring(start: str, lo: int, hi: int) -> str:
    """A 256 KiB cyclic DMA ring programmed before this kernel (stale) in [lo, hi),
    writing from `start` on and never stopped."""
    spec = {"name": "dma0", "kind": "cyclic", "bus": "pcie0", "buffer_size": "256K", "chunk": "16K",
            "period": "10ms", "capture_driver": False, "start": start,
            "placement": {"mode": "stale", "start": lo, "end": hi}}
    return "devices=" + json.dumps([spec])


def test_modern_models_default_to_makedumpfile_d31_and_2005_to_dd(model) -> None:
    cfg = model("modern-x86_64")
    assert (cfg.capture.collector, cfg.capture.dump_level) == ("makedumpfile", 31)
    assert model("paper-i386-2005").capture.collector == "dd"
    with pytest.raises(ConfigError, match="capture.collector"):
        model("paper-i386-2005", "capture.collector=makedumpfile")


def test_makedumpfile_reads_mem_map_then_only_kept_pages_in_pfn_order(small_modern) -> None:
    run = simulate(small_modern("devices=[]"), 1)
    copy, k = run.copy, run.machine.kernel_structs
    assert copy.collector == "makedumpfile" and len(copy.cycles) == 1
    c = copy.cycles[0]
    dumped = copy.in_segs(0, c.hi)
    # mem_map first: 64 bytes per dumped pfn at the dump throughput, before any page.
    assert c.pages_start - copy.start == pytest.approx(dumped * 64 * 1e9 / run.timing.dump_throughput, abs=2)
    pfns = np.arange(0x100, 0x20000, dtype=np.uint64)
    kept = [int(p) for p in pfns if copy.read_by_makedumpfile(int(p))]
    times = [copy.page_read_time(p) for p in kept]
    assert times == sorted(times) and len(set(times)) == len(times)          # pfn order, one page at a time
    assert times[0] >= c.pages_start
    # Each kept page follows the previous kept one by one page's read time: excluded pages cost nothing.
    step = PAGE * 1e9 / run.timing.dump_throughput
    assert np.allclose(np.diff(times), step, atol=1.5)
    assert all(int(cls) not in excluded_classes(31) for cls in k.page_classes(np.array(kept, dtype=np.uint64)))
    excluded = [int(p) for p in pfns if not copy.read_by_makedumpfile(int(p))]
    assert {int(x) for x in k.page_classes(np.array(excluded, dtype=np.uint64))} <= excluded_classes(31)
    # The copy ends after the last kept page; the dump holds only the non-zero kept pages.
    assert run.phase["dump_end"] == copy.end == c.pages_start + int(copy.pages_read() * step)
    assert run.metrics["dump_pages"] == copy.pages_read() - copy.zero_pages() < dumped


def test_dd_reads_in_file_order_and_keeps_everything(small_modern) -> None:
    run = simulate(small_modern("devices=[]", "capture.collector=dd"), 1)
    assert run.copy.collector == "dd"
    r = run_record(run)
    assert (r["collector"], r["pages_excluded"], r["dump_level"]) == ("dd", 0, None)
    assert r["dump_pages"] == sum(-(-c.size // PAGE) for c in run.vmcore.chunks)


def test_dma_into_excluded_pages_is_not_dump_damage(small_modern) -> None:
    # The same ring over ordinary first-kernel RAM (a mix of free, cache, user and
    # kernel pages), writing from the panic on: dd dumps every page it changed,
    # makedumpfile only those it keeps.
    dev = ring("0ms", 600 * MiB, 700 * MiB)
    dd = simulate(small_modern(dev, "capture.collector=dd"), 4)
    mdf = simulate(small_modern(dev), 4)
    k = mdf.machine.kernel_structs
    hit = np.array([p for p in mdf.machine.memory.touched_in(600 * MiB, 700 * MiB)], dtype=np.uint64)
    classes = k.page_classes(hit)
    assert (np.isin(classes, list(excluded_classes(31)))).any() and (classes >= FK.KERNEL).any()
    damaged = {p for p in hit.tolist() if mdf.copy.read_by_makedumpfile(p)
               and mdf.machine.memory.page(p, mdf.copy.page_read_time(p)) != truth_page(mdf, p)
               and any(mdf.machine.memory.page(p, mdf.copy.page_read_time(p)))}
    assert mdf.metrics["dump_pages_corrupted"] == len(damaged) > 0
    assert dd.metrics["dump_pages_corrupted"] > mdf.metrics["dump_pages_corrupted"]
    assert mdf.metrics["collector"]["excluded_pages_hit"] == len(hit) - len(damaged) > 0


def test_dma_into_mem_map_before_makedumpfile_reads_it_changes_what_is_kept(small_modern) -> None:
    # The ring over mem_map (0x37000000.., 2 MiB per 128 MiB section; the last
    # sections map the reservation, which is not dumped) from the panic on:
    # makedumpfile reads struct pages DMA rewrote, and keeps other pages.
    lo = 0x37000000
    run = simulate(small_modern(ring("0ms", lo, lo + 12 * MiB)), 1)
    assert run.machine.memory.touched_in(lo, lo + 12 * MiB)
    r = run_record(run)
    assert r["struct_pages_changed"] > 0 and r["mem_map_changed"]
    assert r["keep_set_changed"] > 0
    # The same ring starting after makedumpfile read mem_map changes nothing it kept.
    late = simulate(small_modern(ring("30s", lo, lo + 12 * MiB)), 1)
    rl = run_record(late)
    assert (rl["struct_pages_changed"], rl["keep_set_changed"], rl["mem_map_changed"]) == (0, 0, False)


def test_struct_page_verdict_follows_makedumpfile_tests() -> None:
    pg = FK.PG["6.1"]
    buddy = (0, 0, 0, 0, 0, 3, FK.PAGE_BUDDY_MAPCOUNT_VALUE & 0xFFFF_FFFF, 0)
    assert struct_page_verdict(buddy, pg, 31) == (True, 8)               # a free order-3 block
    assert struct_page_verdict(buddy, pg, 31 & ~DL_EXCLUDE_FREE) == (False, 1)
    anon_slab = (1 << pg["slab"], 0, 0xFFFF_8880_0000_0001, 0, 0, 0, 0, 0)
    assert struct_page_verdict(anon_slab, pg, 31) == (False, 1)          # isAnon excludes slab pages
    lru_file = (1 << pg["lru"], 0, 0xFFFF_8880_0000_0040, 0, 0, 0, 0, 0)
    assert struct_page_verdict(lru_file, pg, 2) == (True, 1)
    assert struct_page_verdict(lru_file, pg, 8) == (False, 1)                # user data only: kept


def test_filtered_elf_leaves_out_runs_of_256_excluded_pages_and_opens_in_the_real_tools(small_modern, tmp_path) -> None:
    from kdumpsim.formats import elf
    from kdumpsim.formats.vmcore import PFN_EXCLUDED, _filtered_loads, write_filtered_elf
    from kdumpsim.formats.vmcorefile import Chunk

    class Mask:                                    # a collector that keeps what the mask says
        def __init__(self, keep: np.ndarray):
            self.keep = keep

        def dumpable(self, lo: int, hi: int) -> np.ndarray:
            return self.keep[lo - 0x100:hi - 0x100]

    keep = np.ones(1024, dtype=bool)
    keep[10:10 + PFN_EXCLUDED - 1] = False         # 255 excluded: written as they are
    keep[400:400 + PFN_EXCLUDED] = False           # 256: left out, the PT_LOAD ends there
    ph = elf.Phdr(elf.PT_LOAD, 7, 0x1000, 0, 0x100000, 1024 * PAGE, 1024 * PAGE, 0)
    loads = _filtered_loads(Mask(keep), ph, Chunk(0x1000, 0x100000, 1024 * PAGE, 0x100000))
    assert [(p, m // PAGE, f // PAGE) for _, p, m, f, _ in loads] == \
        [(0x100000, 400 + PFN_EXCLUDED, 400), (0x100000 + (400 + PFN_EXCLUDED) * PAGE, 1024 - 656, 1024 - 656)]
    # A real run's filtered ELF: makedumpfile prints its log, libkdumpfile walks its page tables.
    from tests.conftest import require_tool
    require_tool("makedumpfile")
    from kdumpsim.measure.analysis import analyse_vmcore
    run = simulate(small_modern("devices=[]"), 1)
    path = tmp_path / "dump.elf"
    write_filtered_elf(run, path)
    r = analyse_vmcore(path, tmp_path / "work")
    assert r["log_readable"] and r["pagetables_ok"] and r["filter_ok"], r["errors"]
