"""Placing DMA buffers in batches (issue #19) gives what placing them one at a
time the straightforward way gives: the same addresses, the same IOVAs, the
same record of what is taken and the same RNG state afterwards, on sparse and
crowded memory (collisions, the first-fit fallback, a NUMA node running out,
no room at all), with and without an IOMMU."""

from __future__ import annotations

import bisect
import json
import random

import pytest
import simpy

from kdumpsim.crash.devices import make_engines
from kdumpsim.crash.dma import PAGE, DmaEngine
from kdumpsim.crash.run import CrashRun, boot
from kdumpsim.errors import LayoutError
from kdumpsim.kexec import load_capture_kernel
from kdumpsim.kexec.load import KEXEC_LOAD_TIME
from kdumpsim.machine.allocator import PageAllocator
from kdumpsim.machine.iova import IovaDomain
from kdumpsim.machine.layout import Machine
from kdumpsim.machine.ranges import RandomPlacer, Taken, align_up
from kdumpsim.trace.events import Trace
from kdumpsim.units import MiB

GiB = 1024 * MiB


# ------------------------------------------------- the straightforward code
def ref_place(placer: RandomPlacer, rng: random.Random, size: int, align: int, tries: int = 64) -> int | None:
    """One placement, plainly: count the aligned slots of every range, draw one
    with rng.randrange, retry on a collision, else the lowest gap that fits."""
    firsts, cum, total = [], [], 0
    for s, e in placer.ranges:
        first = align_up(s, align)
        total += max(0, (e - size - first) // align + 1) if e - size >= first else 0
        firsts.append(first)
        cum.append(total)
    for _ in range(tries if total else 0):
        k = rng.randrange(total)
        i = bisect.bisect_right(cum, k)
        addr = firsts[i] + (k - (cum[i - 1] if i else 0)) * align
        if placer.taken.free(addr, addr + size):
            placer.taken.add(addr, addr + size)
            return addr
    fit = placer._first_fit(size, align) if total else None
    if fit is not None:
        placer.taken.add(fit, fit + size)
    return fit


def ref_map(dom: IovaDomain, phys: int, size: int) -> int:
    """One IOVA, plainly: top-down, size-aligned, stepping below every reserved window it meets."""
    offset = phys % PAGE
    pages = -(-(offset + size) // PAGE)
    span = (1 << (pages - 1).bit_length()) * PAGE
    start = (dom.top - span) // span * span
    while True:
        hit = next(((s, e) for s, e in dom.reserved if s < start + span and start < e), None)
        if hit is None:
            break
        start = (hit[0] - span) // span * span
    if start < PAGE:
        raise ValueError("IOVA space below 4 GiB exhausted")
    dom.top = start
    return start + offset


def ref_place_many(self: RandomPlacer, rng: random.Random, sizes: list[int], align: int, tries: int = 64) -> list[int]:
    out = []
    for size in sizes:
        addr = ref_place(self, rng, size, align, tries)
        if addr is None:
            break
        out.append(addr)
    return out


def ref_alloc_many(self: PageAllocator, rng: random.Random, sizes: list[int], align: int, lo: int = 0,
                   hi: int = 1 << 64, node: int | None = None) -> list[int]:
    out = []
    for size in sizes:
        for where in ((node, None) if node is not None else (None,)):
            addr = ref_place(self._placer(lo, hi, where), rng, size, align)
            if addr is not None:
                out.append(addr)
                break
        else:
            break
    return out


def ref_map_many(self: IovaDomain, phys: list[int], sizes: list[int]) -> list[int]:
    return [ref_map(self, p, s) for p, s in zip(phys, sizes)]


def ref_engine_alloc_many(self: DmaEngine, sizes: list[int], align: int = PAGE) -> list:
    bufs = []
    for size in sizes:           # alloc: place one buffer, then map it
        phys = self._place_phys([size], align)
        if not phys:
            self._no_room(size)
        bufs += self.map_many(phys, [size])
    return bufs


def one_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every batched path replaced by the straightforward loop over single buffers."""
    monkeypatch.setattr(RandomPlacer, "place_many", ref_place_many)
    monkeypatch.setattr(PageAllocator, "alloc_many", ref_alloc_many)
    monkeypatch.setattr(IovaDomain, "map_many", ref_map_many)
    monkeypatch.setattr(DmaEngine, "alloc_many", ref_engine_alloc_many)


# ------------------------------------------------- the placer and the IOVA space
def _taken_copy(t: Taken) -> Taken:
    c = Taken()
    c.starts, c.ends = list(t.starts), list(t.ends)
    return c


PLACER_CASES = {
    # name: (ranges, pre-taken, sizes, align)
    "sparse_pages": ([(0x100000, 0x40000000), (0x100000000, 0x180000000)], [], [PAGE] * 3000, PAGE),
    "crowded_pages": ([(0x10000, 0x10000 + 300 * PAGE), (0x200000, 0x200000 + 40 * PAGE)],
                      [(0x10000 + 7 * PAGE, 0x10000 + 9 * PAGE)], [PAGE] * 400, PAGE),
    "mixed_sizes": ([(0x3000, 0x3000 + 500 * PAGE)], [(0x9000, 0xA800)], [PAGE, PAGE, 2048, 512] * 150, PAGE),
    "bigger_than_align": ([(0x1000, 0x1000 + 600 * PAGE)], [(0x40000, 0x48000)], [4 * PAGE, PAGE, 3 * PAGE] * 80, PAGE),
    "blocks": ([(0, 64 * MiB), (96 * MiB, 100 * MiB)], [(5 * MiB, 6 * MiB)], [32 * 1024] * 2100, 32 * 1024),
    "zero_and_repeated_starts": ([(0x1000, 0x1000 + 200 * PAGE)], [(0x5000, 0x6000), (0x5000, 0x5800)],
                                 [PAGE, 0, PAGE] * 60 + [PAGE] * 40, PAGE),
    "no_slots": ([(0x1000, 0x1800)], [], [PAGE] * 3, PAGE),
}


@pytest.mark.parametrize("case", sorted(PLACER_CASES))
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_place_many_is_one_place_after_another(case, seed):
    ranges, pre, sizes, align = PLACER_CASES[case]
    base = Taken()
    for s, e in pre:
        base.add(s, e)
    ref_taken, ref_rng = _taken_copy(base), random.Random(seed)
    ref_placer = RandomPlacer(ranges, ref_taken)
    want = ref_place_many(ref_placer, ref_rng, sizes, align)
    for how in ("batch", "single"):
        taken, rng = _taken_copy(base), random.Random(seed)
        placer = RandomPlacer(ranges, taken)
        if how == "batch":
            got = placer.place_many(rng, sizes, align)
        else:
            got = []
            for size in sizes:
                addr = placer.place(rng, size, align)
                if addr is None:
                    break
                got.append(addr)
        assert got == want, how
        assert (taken.starts, taken.ends) == (ref_taken.starts, ref_taken.ends), how
        assert rng.getstate() == ref_rng.getstate(), how
    if case in ("crowded_pages", "mixed_sizes", "bigger_than_align", "no_slots"):
        assert len(want) < len(sizes)             # the space ran out: the edge is exercised


def test_a_crowded_batch_goes_through_the_first_fit(monkeypatch):
    """The crowded case takes the first-fit fallback mid-batch (so the batch's
    own picks must be in `taken` when it looks)."""
    calls = []
    first_fit = RandomPlacer._first_fit
    monkeypatch.setattr(RandomPlacer, "_first_fit", lambda self, size, align: calls.append(size) or
                        first_fit(self, size, align))
    ranges, pre, sizes, align = PLACER_CASES["crowded_pages"]
    taken = Taken()
    for s, e in pre:
        taken.add(s, e)
    got = RandomPlacer(ranges, taken).place_many(random.Random(1), sizes, align)
    assert calls and len(got) == 340 - 2 and len(set(got)) == len(got)
    assert not set(got) & {0x10000 + 7 * PAGE, 0x10000 + 8 * PAGE}          # what was taken before stays out


IOVA_CASES = {
    # name: (reserved windows, limit, in use, sizes, page offsets)
    "below_the_windows": ([(0xFEE00000, 0xFEF00000), (0x80000000, 0xB0000000)], 1 << 32, 1279 * MiB,
                          [PAGE] * 1500, [0]),
    "mixed": ([(0xFEE00000, 0xFEF00000), (0xE0000000, 0xE0003000), (0xD0000000, 0xD8000000)], 1 << 32, 0,
              [PAGE, 2048, 3 * PAGE, 9 * PAGE, 0, 64 * 1024], [0, 16, 4000, 2048]),
    "exhausted": ([(0x10000, 0x20000)], 0x100000, 0, [3 * PAGE] * 80, [0, 100]),
}


@pytest.mark.parametrize("case", sorted(IOVA_CASES))
def test_map_many_is_one_map_after_another(case):
    reserved, limit, in_use, sizes, offsets = IOVA_CASES[case]
    rng = random.Random(7)
    n = 3000 if case != "exhausted" else 80
    size_list = [sizes[i % len(sizes)] for i in range(n)]
    phys = [rng.randrange(1 << 30) // PAGE * PAGE + offsets[i % len(offsets)] for i in range(n)]
    ref, dom = IovaDomain(reserved, limit, in_use), IovaDomain(reserved, limit, in_use)
    want: list[int] | str = []
    try:
        want = ref_map_many(ref, phys, size_list)
    except ValueError as e:
        want = str(e)
    try:
        got: list[int] | str = dom.map_many(phys, size_list)
    except ValueError as e:
        got = str(e)
    assert got == want and dom.top == ref.top
    assert (case == "exhausted") == isinstance(want, str)
    if case == "below_the_windows":
        assert min(want) < 0x80000000 < max(want)          # the run steps below the PCI window


# ------------------------------------------------- whole engines on a machine
def _machine_engines(cfg, seed: int):
    m = Machine(cfg, seed)
    boot(m, KEXEC_LOAD_TIME)
    load_capture_kernel(m)
    run = CrashRun(m, simpy.Environment(initial_time=KEXEC_LOAD_TIME), Trace(False),
                   device_names={d.name for d in cfg.devices})
    try:
        engines = make_engines(run)
    except LayoutError as e:
        return m, str(e)
    return m, engines


def _state(m, engines):
    if isinstance(engines, str):
        return engines, (m.taken.starts, m.taken.ends)
    return ([[(b.phys, b.iova, b.size) for b in e.buffers + e.rings] for e in engines],
            [e.rng.getstate() for e in engines], (m.taken.starts, m.taken.ends))


def _node1_start(model) -> int:
    return Machine(model("modern-x86_64", "devices=[]"), 0)._node_starts[1]


IOMMU = ("topology.iommu={capture_kernel: copy_tables}", "topology.buses.pcie0.iommu=true",
         "topology.buses.pcie1.iommu=true")


def _engine_cases(node1: int) -> dict[str, tuple[list[dict], bool]]:
    """name: (devices, behind an IOMMU)."""
    nvme = {"name": "nvme", "kind": "storage", "bus": "pcie1", "queues": 4, "commands": 256,
            "command_size": "64K", "hmb": "8M"}
    nic = {"name": "nic", "kind": "nic_rx_ring", "bus": "pcie0", "descriptors": 512, "queues": 2}
    virtio = {"name": "vnet", "kind": "virtio_net", "bus": "pcie1", "queue_size": 256, "queues": 2}
    # a window straddling the node boundary: node 1's 1 MiB fills first, then node 0's 2 MiB is crowded
    window = {"mode": "range", "start": node1 - 2 * MiB, "end": node1 + 1 * MiB}
    crowded = {**nvme, "commands": 170, "command_size": "16K", "hmb": 0, "queues": 1, "placement": window}
    return {
        "sparse": ([nvme, nic, virtio], False),
        "sparse_iommu": ([{**nvme, "iova_in_use": "1279M"}, nic, virtio], True),
        "odd_command_size": ([{**nvme, "command_size": "10K", "commands": 100}], True),
        "numa_crowded": ([crowded], False),
        "numa_crowded_iommu": ([{**crowded, "iova_in_use": "1279M"}], True),
        "no_room": ([{**crowded, "commands": 200}], False),
        "stale": ([{**nvme, "placement": {"mode": "stale", "start": 0, "end": 10 * GiB}}, nic], True),
    }


@pytest.mark.parametrize("case", ["sparse", "sparse_iommu", "odd_command_size", "numa_crowded",
                                  "numa_crowded_iommu", "no_room", "stale"])
def test_engines_place_as_one_buffer_at_a_time(model, monkeypatch, case):
    devices, iommu = _engine_cases(_node1_start(model))[case]
    cfg = model("modern-x86_64", "devices=" + json.dumps(devices), *(IOMMU if iommu else ()))
    for seed in (0, 5):
        m, engines = _machine_engines(cfg, seed)
        batched = _state(m, engines)
        with monkeypatch.context() as mp:
            one_at_a_time(mp)
            m1, engines1 = _machine_engines(cfg, seed)
            plain = _state(m1, engines1)
        assert batched == plain
        if case == "no_room":
            assert isinstance(engines, str) and "no room" in engines
            continue
        assert not isinstance(engines, str)
        assert all((b.iova != b.phys) == iommu for e in engines for b in e.buffers)
        if case.startswith("numa_crowded"):
            nodes = {m.node_of(b.phys) for b in engines[0].buffers}
            assert nodes == {0, 1}                 # node 1 ran out: the rest came from node 0
