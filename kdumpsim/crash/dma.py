"""DMA engines that keep writing into RAM after the crash (paper 2.2, 4.4).

Nobody shuts devices down at a crash. Each engine is one SimPy process that
writes into its buffers until its traffic ends, it runs out of work (an RX
ring the dead driver no longer refills), or the capture kernel stops it (its
driver probes the device, with `reset_devices` where needed). A write lands
after the bus path's latency plus size / bottleneck bandwidth (topology).
Behind an IOMMU the device writes IOVAs: translated by the old tables, by
tables the capture kernel copied, onto raw addresses once it turned the IOMMU
off, or blocked once it starts with empty tables (docs/SOURCES.md).
"""

from __future__ import annotations

import random
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kdumpsim import defaults as D
from kdumpsim.config.model import CyclicDma, DeviceBase, NicRxRing, StorageController
from kdumpsim.errors import LayoutError
from kdumpsim.machine.ranges import RandomPlacer
from kdumpsim.units import NS_PER_S, transfer_ns

if TYPE_CHECKING:
    from kdumpsim.crash.run import CrashRun


@dataclass
class Buffer:
    phys: int
    iova: int
    size: int


@dataclass
class DmaEngine:
    index: int
    spec: DeviceBase
    rng: random.Random
    buffers: list[Buffer] = field(default_factory=list)
    ring: Buffer | None = None          # descriptor ring / completion queue
    stopped_at: int | None = None
    stop_reason: str | None = None
    writes: int = 0
    bytes_written: int = 0
    blocked: int = 0

    @property
    def name(self) -> str:
        return self.spec.name

    def stop(self, run: CrashRun, reason: str) -> None:
        if self.stopped_at is None:
            self.stopped_at, self.stop_reason = run.env.now, reason
            run.trace(run.env.now, self.name, "dma_stopped", reason=reason)


# ---------------------------------------------------------------- placement
class IovaSpace:
    """IOVAs handed out top-down from `base`, one run of pages per buffer."""

    def __init__(self, base: int):
        self.next = base

    def map(self, addr: int, size: int) -> int:
        self.next -= -(-size // D.PAGE_SIZE) * D.PAGE_SIZE
        return self.next + addr % D.PAGE_SIZE


def make_engines(run: CrashRun) -> list[DmaEngine]:
    cfg = run.machine.cfg
    engines = []
    iommu = IovaSpace(cfg.topology.iommu.iova_base) if cfg.topology.iommu else None
    behind = {b.name for b in cfg.topology.buses if b.iommu}
    for i, spec in enumerate(cfg.devices):
        eng = DmaEngine(i, spec, run.machine.rng("device", i))   # by position: a rename changes nothing
        free = _placement_space(run, i, spec)
        iova = iommu if spec.bus in behind else None
        ring_size = _ring_size(spec)
        if ring_size:
            eng.ring = _alloc(i, free, ring_size, eng.rng, iova)
        eng.buffers = [_alloc(i, free, s, eng.rng, iova) for s in _buffer_sizes(spec)]
        run.trace(run.env.now, spec.name, "dma_buffers_mapped", device_kind=spec.kind, buffers=len(eng.buffers),
                  lowest=min(b.phys for b in eng.buffers), highest=max(b.phys + b.size for b in eng.buffers))
        engines.append(eng)
    return engines


def _buffer_sizes(spec: DeviceBase) -> list[int]:
    if isinstance(spec, NicRxRing):
        return [spec.buffer_size] * spec.descriptors
    if isinstance(spec, CyclicDma):
        return [spec.buffer_size]
    assert isinstance(spec, StorageController)
    return [spec.command_size] * spec.commands


def _ring_size(spec: DeviceBase) -> int:
    if isinstance(spec, NicRxRing):
        return spec.descriptors * D.RX_DESCRIPTOR_BYTES
    if isinstance(spec, StorageController):
        return spec.commands * 16     # NVMe completion queue entries are 16 bytes
    return 0


def _placement_space(run: CrashRun, index: int, spec: DeviceBase) -> RandomPlacer:
    m, p = run.machine, spec.placement
    if p.mode == "random":
        return m.page_pool      # buffers come from the page allocator
    if p.mode == "reservation":
        return RandomPlacer([(m.reservation.start, m.reservation.end)], m.taken)
    space = [(max(s, p.start), min(e, p.end)) for s, e in m.ram_ranges if s < p.end and e > p.start]
    if not space:
        raise LayoutError(f"devices.{index}.placement", f"no System RAM in {p.start:#x}-{p.end:#x}")
    return RandomPlacer(space, m.taken)


def _alloc(index: int, free: RandomPlacer, size: int, rng: random.Random, iova: IovaSpace | None) -> Buffer:
    align = min(D.PAGE_SIZE, 1 << max(0, (size - 1).bit_length()))
    addr = free.place(rng, size, align)
    if addr is None:
        raise LayoutError(f"devices.{index}.placement", f"no room for a {size}-byte DMA buffer")
    return Buffer(addr, iova.map(addr, size) if iova else addr, size)


# ---------------------------------------------------------------- writing
def dma_write(run: CrashRun, eng: DmaEngine, buf: Buffer, offset: int, data: bytes) -> Generator:
    """Move `data` over the device's path, then land it where translation says."""
    env, m = run.env, run.machine
    target_phys = buf.phys + offset
    route = m.topology.route(eng.name, f"mem{m.node_of(target_phys)}")
    yield env.timeout(route.latency + transfer_ns(len(data), route.bandwidth))
    if eng.stopped_at is not None:
        return
    addr = target_phys
    if route.iommu:
        mode = run.iommu_mode
        if mode == "fault":
            eng.blocked += 1
            run.trace(env.now, eng.name, "dma_fault", iova=buf.iova + offset, bytes=len(data))
            return
        if mode == "disable":
            addr = buf.iova + offset    # no translation: the IOVA is taken as a physical address
    if not m.memory.is_ram(addr, len(data)):
        run.trace(env.now, eng.name, "dma_to_nowhere", addr=addr, bytes=len(data))
        return
    m.memory.write(addr, data, env.now, eng.name)
    eng.writes += 1
    eng.bytes_written += len(data)
    run.trace(env.now, eng.name, "dma_write", addr=addr, bytes=len(data), region=run.region_of(addr))


def _active(run: CrashRun, eng: DmaEngine) -> bool:
    spec = eng.spec
    if eng.stopped_at is not None:
        return False
    if spec.duration is not None and run.env.now >= max(spec.start, 0) + spec.duration:
        eng.stop(run, "traffic_ended")
        return False
    return True


def nic_rx_ring(run: CrashRun, eng: DmaEngine) -> Generator:
    """e1000-style RX: each packet fills the next free buffer, then the
    descriptor's status is written back; with the driver dead the ring is
    never refilled, so it stops after `descriptors` packets."""
    spec: NicRxRing = eng.spec  # type: ignore[assignment]
    env = run.env
    yield env.timeout(max(spec.start, 0) - env.now)
    size = min(spec.packet_size, spec.buffer_size)
    for head in range(spec.descriptors):
        yield env.timeout(round(eng.rng.expovariate(spec.packet_rate) * NS_PER_S))
        if not _active(run, eng):
            return
        yield from dma_write(run, eng, eng.buffers[head], 0, eng.rng.randbytes(size))
        # Descriptor write-back: length (u16 @8), status DD|EOP (u8 @12) (struct e1000_rx_desc).
        desc = bytes(8) + size.to_bytes(2, "little") + bytes(2) + b"\x03" + bytes(3)
        yield from dma_write(run, eng, eng.ring, head * D.RX_DESCRIPTOR_BYTES, desc)
    eng.stop(run, "rx_ring_exhausted")


def cyclic(run: CrashRun, eng: DmaEngine) -> Generator:
    """A cyclic engine (audio, capture card): `chunk` bytes every `period`, wrapping, forever."""
    spec: CyclicDma = eng.spec  # type: ignore[assignment]
    env = run.env
    yield env.timeout(max(spec.start, 0) - env.now)
    buf, offset = eng.buffers[0], 0
    chunk = min(spec.chunk, buf.size)
    while _active(run, eng):
        n = min(chunk, buf.size - offset)
        yield from dma_write(run, eng, buf, offset, eng.rng.randbytes(n))
        offset = (offset + n) % buf.size
        yield env.timeout(spec.period)


def storage(run: CrashRun, eng: DmaEngine) -> Generator:
    """Commands in flight at the crash complete at random times within the
    traffic window, each filling its buffer and posting a completion entry."""
    spec: StorageController = eng.spec  # type: ignore[assignment]
    env = run.env
    start = max(spec.start, 0)
    window = spec.duration if spec.duration is not None else 100_000_000   # 100 ms if unset (assumption)
    times = sorted(start + eng.rng.randrange(0, max(1, window)) for _ in eng.buffers)
    for cmd, when in enumerate(times):
        yield env.timeout(max(0, when - env.now))
        if eng.stopped_at is not None:
            return
        yield from dma_write(run, eng, eng.buffers[cmd], 0, eng.rng.randbytes(eng.buffers[cmd].size))
        yield from dma_write(run, eng, eng.ring, cmd * 16, cmd.to_bytes(2, "little") + bytes(13) + b"\x01")
    eng.stop(run, "commands_completed")


ENGINES = {"nic_rx_ring": nic_rx_ring, "cyclic": cyclic, "storage": storage}
