"""makedumpfile's keep decision (MakedumpfileCopy.decide, built block by
block from the hashed page classes) gives what the straightforward per-page
computation gives: each pfn's class from its definition (splitmix64 of pfn ^
salt, % 10**6, against the PAGE_USE thresholds; memblock's reserved pages
and the allocations painted over the whole pfn range), kept where dumped and
not excluded by class or by its struct page as read. On a machine with holes
in RAM and in the dump, several free ranges, allocations across block edges,
DMA into mem_map (struct-page overrides) and several cycles."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kdumpsim.crash import collector as CO
from kdumpsim.firstkernel import mm as FK
from kdumpsim.measure import simulate
from tests.conftest import load_named

PAGE = 4096
BLOCK = CO.BLOCK
# 1.25 GiB of RAM in four ranges: holes below 1 MiB, at 256 MiB and over all of block 6 (768-900 MiB).
HOLEY = ('memory.iomem=["00001000-0009fbff : System RAM", "00100000-0fff7fff : System RAM", '
         '"10011000-2fffffff : System RAM", "38400000-57ffffff : System RAM"]',
         "memory.numa_nodes=1", "topology.buses.pcie1.numa_node=0", "cpus.count=4", "cpus.sockets=1",
         "cpus.panic_cpu=1", "kexec.crashkernel=128M", "kexec.initrd_size=8M")
MEMMAP = 0x4EC00000              # this machine's mem_map


def _ring_over_memmap() -> str:
    """A stale 2 MiB DMA ring in the first 16 MiB of mem_map, rewriting it from the panic on."""
    spec = {"name": "dma0", "kind": "cyclic", "bus": "pcie0", "buffer_size": "2M", "chunk": "64K",
            "period": "1ms", "capture_driver": False, "start": "0ms",
            "placement": {"mode": "stale", "start": MEMMAP, "end": MEMMAP + (16 << 20)}}
    return "devices=" + json.dumps([spec])


@pytest.fixture(scope="module")
def holey_run():
    run = simulate(load_named("modern-x86_64", *HOLEY, _ring_over_memmap()), 1, trace=False)
    assert run.machine.kernel_structs.memmap == MEMMAP and run.copy.overrides
    return run


def reference_classes(k: FK.FirstKernel, n: int) -> np.ndarray:
    """page_classes of pfns 0..n-1 by the definition, all pfns at once."""
    pfns = np.arange(n, dtype=np.uint64)
    u = FK._mix(pfns ^ np.uint64(k.salt)) % np.uint64(1_000_000)
    cls = np.searchsorted(k.thresholds, u, side="right").astype(np.uint8)
    for s, e in zip(k.m.taken.starts, k.m.taken.ends):          # pages an allocation overlaps
        cls[s // PAGE:-(-e // PAGE)] = FK.KERNEL
    free = np.zeros(n, dtype=bool)
    for s, e in k.free_ranges:                                  # pages wholly in a free range
        free[-(-s // PAGE):e // PAGE] = True
    cls[~free] = FK.RESERVED
    return cls


def _add_allocations(taken, overlapping: bool) -> list[tuple[int, int]]:
    """Allocations across block edges (ends not page aligned), in free memory;
    with `overlapping`, one starting inside another and ending after it (not
    disjoint: the page_classes path)."""
    added = []
    for b in (3, 4, 7):
        a = b * BLOCK * PAGE - 3 * PAGE - 100
        assert taken.free(a, a + 10 * PAGE + 5)
        added.append((a, a + 10 * PAGE + 5))
    if overlapping:
        added.append((7 * BLOCK * PAGE, 7 * BLOCK * PAGE + 12 * PAGE))
    for a, e in added:
        taken.add(a, e)
    return added


def _remove(taken, added: list[tuple[int, int]]) -> None:
    for a, e in added:
        i = taken.starts.index(a)
        assert taken.ends[i] == e
        del taken.starts[i], taken.ends[i]


# (dump level, overlapping allocations, makedumpfile's cyclic buffer (None: its own, one cycle), blocks built at once)
DECIDE_CASES = [(31, False, 16 << 10, 8), (6, False, None, 2), (16, True, 16 << 10, 3), (1, False, None, 8)]


@pytest.mark.parametrize("dump_level,overlapping,cyclic_buffer,group", DECIDE_CASES)
def test_decide_counts_what_the_per_page_classes_keep(holey_run, monkeypatch, dump_level, overlapping,
                                                      cyclic_buffer, group) -> None:
    run, k = holey_run, holey_run.machine.kernel_structs
    added = _add_allocations(run.machine.taken, overlapping)
    try:
        if cyclic_buffer:
            monkeypatch.setattr(CO, "CYCLIC_BUFFER_MAX", cyclic_buffer)     # 131072 pfns a cycle: three cycles
        monkeypatch.setattr(CO, "DECIDE_GROUP", group)
        copy = CO.MakedumpfileCopy(run.vmcore, run.copy.start, run.timing.dump_throughput, k,
                                   run.machine.memory, dump_level)
        assert len(copy.cycles) == (3 if cyclic_buffer else 1) and copy.cyclic == bool(cyclic_buffer)
        copy.run_all()
        assert k.ranges_disjoint() != overlapping
        n = copy.cycles[-1].hi
        cls = reference_classes(k, n)
        assert np.array_equal(k.page_classes(np.arange(n, dtype=np.uint64)), cls)
        dumped = np.zeros(n, dtype=bool)
        for ch in run.vmcore.chunks:                                # pfns whose first byte is in a PT_LOAD
            dumped[-(-ch.origin // PAGE):-(-(ch.origin + ch.size) // PAGE)] = True
        kept = dumped & ~np.isin(cls, list(CO.excluded_classes(dump_level)))
        if dump_level & CO.DL_EXCLUDE_FREE:
            assert copy.overrides and copy.struct_pages_changed
        for p, excluded in copy.overrides.items():
            kept[p] = not excluded
        for c in copy.cycles:
            blocks = range(c.lo // BLOCK, c.hi // BLOCK)
            assert c.block_kept == {b: int(kept[b * BLOCK:(b + 1) * BLOCK].sum()) for b in blocks}
            assert c.prefix == [0] + np.cumsum([c.block_kept[b] for b in blocks]).tolist()
            assert c.zero_class == int((kept & (cls == FK.ZERO))[c.lo:c.hi].sum())
        assert [copy.read_by_makedumpfile(p) for p in range(n)] == kept.tolist()
        before = np.cumsum(kept) - kept                             # kept pfns before each pfn
        for p in np.flatnonzero(kept)[::97].tolist():
            c = copy.cycle_of(p)
            want = c.pages_start + int((before[p] - before[c.lo]) * copy.page_ns)
            assert copy.page_read_time(p) == want
    finally:
        _remove(run.machine.taken, added)


def test_the_decision_sees_holes_and_edges(holey_run) -> None:
    """The machine has what the test above needs: holes in the dump inside
    blocks, several free ranges, and mem_map rewritten before it was read."""
    copy, k = holey_run.copy, holey_run.machine.kernel_structs
    assert len(copy.spans) >= 3 and any(a % BLOCK for a, _ in copy.spans[1:])
    assert copy.cycles[0].block_kept[6] == 0 < copy.cycles[0].block_kept[7]     # a block with no dumped pfn
    assert len(k.free_ranges) >= 4
    assert copy.struct_pages_changed > 0
    assert {p // BLOCK for p in copy.overrides} == {4, 5}          # the struct pages of two blocks


def _reference_use(k: FK.FirstKernel, pfns: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    u = FK._mix(pfns ^ np.uint64(k.salt)) % np.uint64(1_000_000)
    return np.searchsorted(thresholds, u, side="right").astype(np.uint8)


@pytest.mark.parametrize("cum", [(350000, 600000, 650000, 850000, 880000, 1_000_000),     # g = 10000
                                 (123457, 600000, 650001, 850000, 999999, 1_000_000),     # g = 1
                                 (0, 500000, 500000, 750000, 1_000_000, 1_000_000)])      # empty classes
def test_the_hash_classes_equal_the_modulo_and_the_thresholds(holey_run, cum) -> None:
    k = holey_run.machine.kernel_structs
    saved = k._use_div, k._use_mod, k._class_of_ug
    g, k._class_of_ug = FK._class_table(cum)
    k._use_div, k._use_mod = np.uint64(g), np.uint64(1_000_000 // g)
    try:
        th = np.array(cum[:-1], dtype=np.uint64)
        rng = np.random.default_rng(5)
        pfns = np.concatenate([rng.integers(0, 2**63, 100_000, dtype=np.uint64) * np.uint64(2),
                               np.array([0, 1, 2**64 - 1, 2**63, k.salt, k.salt ^ 1], dtype=np.uint64)])
        assert np.array_equal(k._use_classes(pfns), _reference_use(k, pfns, th))      # more than one step
        for lo, hi in ((0, 100), (5, 3 * FK.HASH_STEP + 7), (FK.HASH_STEP, 2 * FK.HASH_STEP), (2**40 + 3, 2**40 + 70_000)):
            want = _reference_use(k, np.arange(lo, hi, dtype=np.uint64), th)
            assert np.array_equal(k._use_classes_range(lo, hi), want)
        assert np.array_equal(k._use_classes(np.zeros(0, dtype=np.uint64)), np.zeros(0, dtype=np.uint8))
    finally:
        k._use_div, k._use_mod, k._class_of_ug = saved


def test_page_classes_range_equals_page_classes_at_unaligned_windows(holey_run) -> None:
    k = holey_run.machine.kernel_structs
    n = holey_run.copy.spans[-1][1]
    cls = reference_classes(k, n)
    for lo, hi in ((0, 40_000), (1, 2), (65_000, 66_000), (BLOCK - 5, 3 * BLOCK + 9), (n - 70_000, n)):
        assert np.array_equal(k.page_classes_range(lo, hi), cls[lo:hi])
    sample = np.random.default_rng(2).integers(0, n, 2000).tolist()
    assert [k.page_class(p) for p in sample] == cls[sample].tolist()
