"""DMA engines that keep writing into RAM after the crash (paper 2.2, 4.4).

Nobody shuts devices down at a crash. Each engine is a component that owns
one SimPy process: it writes into its buffers until its traffic ends, it runs
out of work (an RX ring the dead driver no longer refills), or the capture
kernel stops it (its driver probes and resets the device), which interrupts
the process at that instant.

Where the bytes land (docs/SOURCES.md §11): a buffer is memory the first
kernel's page allocator could have given the driver (`Placement.mode:
allocator/range`). The only other ways are named: `stale` and `wild`
placements, the CMA area (`cma`), and an IOMMU: behind one the device writes
IOVAs, which the old tables translate to its buffers, until the capture
kernel's IOMMU init turns translation off (IOVAs land as physical addresses)
or gives the device fresh tables (the write faults).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn

import numpy as np
import simpy

from kdumpsim import defaults as D
from kdumpsim.config.model import DeviceBase
from kdumpsim.errors import LayoutError
from kdumpsim.machine.iova import IovaDomain
from kdumpsim.machine.layout import derive_seed
from kdumpsim.machine.ranges import RandomPlacer, Taken, align_up
from kdumpsim.units import transfer_ns

if TYPE_CHECKING:
    from kdumpsim.crash.run import CrashRun

PAGE = D.PAGE_SIZE
MAX_WRITES = 1_000_000     # DMA writes one device may make in a run (a real run makes thousands)


@dataclass
class Buffer:
    phys: int
    iova: int      # the address the device uses (= phys without translation)
    size: int


def wait_until(env: simpy.Environment, t: int) -> simpy.Timeout:
    """An event at absolute simulated time `t` (now, if `t` is past)."""
    return env.timeout(max(0, t - env.now))


class DmaEngine:
    """One device's DMA. Subclasses place their buffers (`place`) and generate
    their traffic (`traffic`); the base class owns the process, the stop and
    the write path."""

    kind = ""
    finished = "done"            # stop reason when `traffic` runs out of work

    def __init__(self, run: CrashRun, index: int, spec: DeviceBase):
        self.run, self.index, self.spec = run, index, spec
        self.name = spec.name
        self.rng = run.machine.rng("device", index)        # by position: a rename changes nothing
        self.payload = PayloadStream(run.machine.seed, index)
        self.field = f"devices.{index}"
        self.node = run.machine.topology.bus_node(spec.bus)
        self.buffers: list[Buffer] = []
        self.rings: list[Buffer] = []
        self.stopped_at: int | None = None
        self.stop_reason: str | None = None
        self.writes = self.bytes_written = self.blocked = self.nowhere = self.attempts = 0
        self.process: simpy.Process | None = None
        self.children: list[simpy.Process] = []      # sub-processes of the device, stopped with it
        self.new_domain = False      # the capture kernel's driver mapped a buffer: old IOVAs no longer map
        self.iova = self._iova_domain()
        self._stale = Taken()
        self._placer: RandomPlacer | None = None     # a cma or stale device's own placer
        self._bus: dict[tuple[int, int], int] = {}    # (memory node, bytes) -> ns on the bus (_bus_ns)
        self.place()

    # ------------------------------------------------------------ placement
    def place(self) -> None:
        raise NotImplementedError

    def _iova_domain(self) -> IovaDomain | None:
        """A translated device gets its own IOVA space; passthrough or no IOMMU: none."""
        cfg = self.run.machine.cfg
        iommu = cfg.topology.iommu
        behind = any(b.name == self.spec.bus and b.iommu for b in cfg.topology.buses)
        if iommu is None or not behind or iommu.first_kernel == "passthrough":
            return None
        windows = [(r.start, r.end + 1) for r in cfg.memory.iomem if r.type == "PCI Bus"]
        limit = D.IOVA_SAC_LIMIT if self.spec.dma_bits == 64 else 1 << 32
        return IovaDomain([D.IOVA_MSI_WINDOW, *windows], limit, self.spec.iova_in_use)

    def alloc(self, size: int, align: int = PAGE) -> Buffer:
        """`size` bytes where this device's buffers can be (see Placement), mapped for DMA."""
        return self.alloc_many([size], align)[0]

    def alloc_many(self, sizes: list[int], align: int = PAGE) -> list[Buffer]:
        """`alloc` of each of `sizes` in turn: the same draws, addresses and IOVAs."""
        phys = self._place_phys(sizes, align)
        bufs = self.map_many(phys, sizes[:len(phys)])      # as one at a time: the ones placed are mapped
        if len(phys) < len(sizes):
            self._no_room(sizes[len(phys)])
        return bufs

    def map_many(self, phys: list[int], sizes: list[int]) -> list[Buffer]:
        """dma_map of each [phys, phys+size): the addresses the device will use."""
        iovas = self.iova.map_many(phys, sizes) if self.iova is not None else phys
        return [Buffer(p, a, s) for p, a, s in zip(phys, iovas, sizes)]

    def alloc_phys_many(self, size: int, align: int, count: int) -> list[int]:
        """`count` unmapped buffers of `size` (a driver carves its own slices from them)."""
        phys = self._place_phys([size] * count, align)
        if len(phys) < count:
            self._no_room(size)
        return phys

    def _place_phys(self, sizes: list[int], align: int) -> list[int]:
        """Physical addresses for `sizes`, in turn; short if one found no room."""
        m, p = self.run.machine, self.spec.placement
        if p.mode in ("allocator", "range", "wild", "given"):
            lo, hi = self._window()
            return m.allocator.alloc_many(self.rng, sizes, align, lo, hi, self.node)
        if self._placer is None:
            if p.mode == "cma":
                assert m.cma is not None
                self._placer = RandomPlacer([m.cma], m.taken)
            else:   # stale: programmed before this kernel's allocator existed; anywhere in RAM, page aligned
                limit = 1 << self.spec.dma_bits
                space = [(max(s, p.start), min(e, p.end, limit)) for s, e in m.ram_ranges]
                self._placer = RandomPlacer(space, self._stale)
        return self._placer.place_many(self.rng, sizes, align if p.mode == "cma" else PAGE)

    def _window(self) -> tuple[int, int]:
        """[lo, hi) the allocator may use: the DMA mask, and the placement's range."""
        p, limit = self.spec.placement, 1 << self.spec.dma_bits
        lo, hi = (p.start, p.end) if p.mode == "range" else (0, limit)
        return lo, min(hi, limit)

    def _no_room(self, size: int) -> NoReturn:
        p = self.spec.placement
        if p.mode in ("allocator", "range", "wild", "given"):
            where = "the first kernel's free memory" + (f" in {p.start:#x}-{p.end:#x}" if p.mode == "range" else "")
        elif p.mode == "cma":
            where = "the CMA area"
        else:
            where = f"System RAM in {p.start:#x}-{p.end:#x}"
        hint = (" (the reservation, the kernel and the low 1 MiB are not the allocator's; use mode: stale "
                "for a device programmed before the reservation existed)") if p.mode == "range" else ""
        raise LayoutError(f"{self.field}.placement", f"no room for a {size}-byte DMA buffer in {where}{hint}")

    def given_addresses(self, size: int) -> list[int]:
        """Placement `given`: the measured buffer addresses, each checked to be
        memory the first kernel's allocator could have given (System RAM above
        1 MiB, outside the kernel image and the reservation), and marked taken."""
        m, p = self.run.machine, self.spec.placement
        assert p.addresses is not None
        res = m.reservation
        for i, a in enumerate(p.addresses):
            end = a + size
            why = None
            if not m.memory.is_ram(a, size):
                why = "is not in System RAM"
            elif a < 1 << 20:
                why = "is in the low 1 MiB (reserved by x86 setup)"
            elif m.overlaps_kernel(a, end):
                why = "overlaps the kernel image (" + ", ".join(
                    f"{ks:#x}-{ke - 1:#x}" for ks, ke in m.kernel_ranges if ks < end and a < ke) + ")"
            elif res.overlaps(a, end):
                why = "overlaps the crashkernel reservation " + ", ".join(f"{s:#x}-{e - 1:#x}" for s, e in res.spans)
            if why:
                raise LayoutError(f"{self.field}.placement.addresses.{i}",
                                  f"buffer {a:#x}-{end - 1:#x} {why}: the first kernel's allocator could not "
                                  "have given it (name the mechanism with mode: stale, wild or cma)")
        for a in p.addresses:
            m.taken.add(a, a + size)
        return list(p.addresses)

    def given_rings(self, size: int, count: int) -> list[Buffer]:
        """Placement `given`: the measured ring addresses (or allocator-placed if not given)."""
        rings = self.spec.placement.rings
        if rings:
            if len(rings) != count:
                raise LayoutError(f"{self.field}.placement.rings", f"{len(rings)} ring addresses for {count} rings")
            for a in rings:
                self.run.machine.taken.add(a, a + size)
            return self.map_many(list(rings), [size] * len(rings))
        return self.alloc_many([size] * count)

    def trace_mapped(self) -> None:
        if not self.run.trace.enabled:
            return             # a sweep's run keeps no trace: no lowest/highest over thousands of buffers
        bufs = self.buffers + self.rings
        self.run.trace(self.run.env.now, self.name, "dma_buffers_mapped", device_kind=self.kind,
                       buffers=len(self.buffers), placement=self.spec.placement.mode,
                       lowest=min(b.phys for b in bufs), highest=max(b.phys + b.size for b in bufs),
                       iommu=self.iova is not None)

    # ------------------------------------------------------------ the process
    def start(self) -> None:
        self.process = self.run.env.process(self._main())
        if self.spec.duration is not None:
            self.run.env.process(self._traffic_window())

    def _main(self) -> Generator:
        try:
            yield wait_until(self.run.env, max(self.spec.start, 0))
            yield from self.traffic()
            self.stop(self.finished)
        except simpy.Interrupt:
            pass     # reset by its driver, or its traffic ended: stop() has recorded why

    def _traffic_window(self) -> Generator:
        yield wait_until(self.run.env, max(self.spec.start, 0) + self.spec.duration)
        self.stop("traffic_ended")

    def traffic(self) -> Generator:
        raise NotImplementedError

    def stop(self, reason: str) -> None:
        """The device does no more DMA from now on."""
        if self.stopped_at is not None:
            return
        env = self.run.env
        self.stopped_at, self.stop_reason = env.now, reason
        self.run.trace(env.now, self.name, "dma_stopped", reason=reason)
        for proc in [self.process, *self.children]:
            if proc is not None and proc.is_alive and env.active_process is not proc:
                proc.interrupt(reason)

    # ------------------------------------------------------------ writing
    def write(self, buf: Buffer, offset: int, data: bytes) -> Generator:
        """Move `data` over the device's bus path, then land it where the
        translation in force at that moment says."""
        run, m, n = self.run, self.run.machine, len(data)
        self.attempts += 1
        if self.attempts > MAX_WRITES:
            raise LayoutError(self.field, f"more than {MAX_WRITES} DMA writes in one run: the device's rate "
                              "(packet_rate, period, chunk) is finer than a run can simulate; coarsen it")
        yield run.env.timeout(self._bus_ns(m.node_of(buf.phys + offset), n))
        addr = self._target(buf, offset)
        if addr is None:
            self.blocked += 1
            run.trace(run.env.now, self.name, "dma_fault", iova=buf.iova + offset, bytes=n)
            return
        if not m.memory.is_ram(addr, n):
            self.nowhere += 1
            run.trace(run.env.now, self.name, "dma_to_nowhere", addr=addr, bytes=n)
            return
        m.memory.write(addr, data, run.env.now, self.name)
        if run.capture_mem is not None:      # what the capture kernel uses that page for now
            run.capture_mem.on_dma(addr, n, run.env.now, self.name)
        self.writes += 1
        self.bytes_written += n
        if run.trace.enabled:          # a sweep keeps no trace: no per-write event to build
            hits = run.regions_of(addr, n)
            run.trace(run.env.now, self.name, "dma_write", addr=addr, bytes=n, region=hits[0][0],
                      **({"regions": [r for r, _ in hits]} if len(hits) > 1 else {}))

    def _bus_ns(self, node: int, n: int) -> int:
        """Latency of the path to memory node `node` plus the transfer of `n`
        bytes at its narrowest link (the routes are fixed: remembered)."""
        key = (node, n)
        ns = self._bus.get(key)
        if ns is None:
            route = self.run.machine.topology.route(self.name, f"mem{node}")
            ns = self._bus[key] = route.latency + transfer_ns(n, route.bandwidth)
        return ns

    def _target(self, buf: Buffer, offset: int) -> int | None:
        """Physical address of the write, or None when the IOMMU blocks it."""
        if self.spec.placement.mode == "wild":
            return self._wild_address(len_hint=PAGE)
        if self.iova is None:
            return buf.phys + offset
        state = self.run.iommu_state
        if state == "old_tables" or (state == "copied" and not self.new_domain):
            return buf.phys + offset
        if state == "off":
            return buf.iova + offset             # no translation: the IOVA is taken as a physical address
        return None                              # fresh tables: the old IOVA is not mapped, DMAR fault

    def _wild_address(self, len_hint: int) -> int:
        """A corrupted driver's target: any RAM page in the placement's window."""
        p, m = self.spec.placement, self.run.machine
        lo, hi = p.start or 0, p.end or (1 << 64)
        space = [(max(s, lo), min(e, hi)) for s, e in m.ram_ranges if min(e, hi) - max(s, lo) >= len_hint]
        total = sum(e - s for s, e in space)
        k = self.rng.randrange(total // PAGE) * PAGE
        for s, e in space:
            if k < e - s:
                return align_up(s, PAGE) + k if align_up(s, PAGE) + k + len_hint <= e else s
            k -= e - s
        return space[-1][0]


class PayloadStream:
    """What a device writes: bytes nobody could predict (packet data, disk
    blocks), from the device's own stream, apart from the draws that decide
    when and where it writes. A counter-based generator (numpy's PCG64)
    makes them several times faster than random.getrandbits, and the bytes
    of one write never shift another decision."""

    def __init__(self, seed: int, index: int):
        self._bits = np.random.PCG64(derive_seed(seed, "payload", index))

    def __call__(self, n: int) -> bytes:
        raw = self._bits.random_raw((n + 7) >> 3).tobytes()
        return raw if not n & 7 else raw[:n]
