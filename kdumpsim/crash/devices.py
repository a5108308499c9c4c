"""The device kinds: how each lays out its buffers and what it writes after
the crash, following its Linux driver (docs/SOURCES.md §11, Linux 6.1.192).

- `nic_rx_ring` (e1000): the hardware owns N-2 descriptors at the panic; each
  buffer is a 1920-byte page_frag slice, 17 to a 32 KiB order-3 block, handed
  out from the block's top; a packet fills the next owned buffer (at offset
  64, at most rx_buffer_len bytes) and writes its descriptor back.
- `virtio_net`: mergeable 1536-byte buffers, 21 to a 32 KiB block, bottom-up;
  N-32..N posted; a packet writes its header and frame, then the used ring.
- `storage` (NVMe): commands in flight complete after a lognormal latency,
  filling their data pages (scattered page-cache or user pages) and posting a
  16-byte completion entry; a Host Memory Buffer is written until reset.
- `cyclic`: one coherent buffer, a chunk every period, wrapping, forever.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Generator
from typing import TYPE_CHECKING

import simpy

from kdumpsim import defaults as D
from kdumpsim.config.model import CyclicDma, NicRxRing, StorageController, VirtioNet
from kdumpsim.crash.dma import PAGE, Buffer, DmaEngine
from kdumpsim.errors import LayoutError
from kdumpsim.machine.ranges import align_up
from kdumpsim.units import NS_PER_S, parse_duration

if TYPE_CHECKING:
    from kdumpsim.crash.run import CrashRun

Z999 = 3.090232306167813      # standard normal quantile of 0.999


def _frag_slices(engine: DmaEngine, count: int, slice_size: int, top_down: bool) -> list[int]:
    """`count` page_frag slices of `slice_size`, carved from 32 KiB blocks the
    page allocator hands out (order-3, naturally aligned)."""
    per_block = D.PAGE_FRAG_BLOCK // slice_size
    blocks = engine.alloc_phys_many(D.PAGE_FRAG_BLOCK, D.PAGE_FRAG_BLOCK, -(-count // per_block))
    out: list[int] = []
    for block in blocks:
        for k in range(min(per_block, count - len(out))):
            out.append(block + D.PAGE_FRAG_BLOCK - (k + 1) * slice_size if top_down else block + k * slice_size)
    return out


class RxQueues:
    """Per-queue heads over the buffers the hardware owns; RSS spreads packets."""

    def __init__(self, engine: DmaEngine, posted: list[int]):
        self.rng, self.posted, self.heads = engine.rng, posted, [0] * len(posted)

    def next(self) -> tuple[int, int | None]:
        """(queue, slot) for the next packet; slot None: that queue is full and drops it."""
        q = self.rng.randrange(len(self.heads))
        if self.heads[q] >= self.posted[q]:
            return q, None
        self.heads[q] += 1
        return q, self.heads[q] - 1

    @property
    def exhausted(self) -> bool:
        return all(h >= p for h, p in zip(self.heads, self.posted))


def _interarrival(engine: DmaEngine, rate: float) -> int:
    """Poisson arrivals at `rate` packets/s, or evenly spaced ones (`arrivals: periodic`)."""
    if getattr(engine.spec, "arrivals", "poisson") == "periodic":
        return round(NS_PER_S / rate)
    return round(engine.rng.expovariate(rate) * NS_PER_S)


class RxNic(DmaEngine):
    """A NIC receiving into the buffers its dead driver posted: a packet fills
    the next owned buffer of the queue RSS picks, then the NIC reports it."""

    finished = "ring_exhausted"
    header = 0                   # bytes the NIC writes before the frame
    spec: NicRxRing | VirtioNet
    posted: list[int]
    queue_buffers: list[list[Buffer]]

    def traffic(self) -> Generator:
        s = self.spec
        queues = RxQueues(self, self.posted)
        size = min(self.header + s.packet_size, s.buffer_size)
        while not queues.exhausted:
            yield self.run.env.timeout(_interarrival(self, s.packet_rate))
            q, slot = queues.next()
            if slot is None:
                continue            # that queue has no buffer left: the NIC drops the packet
            yield from self.write(self.queue_buffers[q][slot], 0, self.payload(size))
            yield from self.report(q, slot, size)

    def report(self, queue: int, slot: int, size: int) -> Generator:
        raise NotImplementedError


class E1000Rx(RxNic):
    kind = "nic_rx_ring"
    spec: NicRxRing

    def place(self) -> None:
        s = self.spec
        n = s.descriptors
        posted = s.posted if s.posted is not None else n - D.E1000_HW_OWNED_SHORT
        frag = _frag_size(s.buffer_size)
        ring_size = align_up(n * D.RX_DESCRIPTOR_BYTES, PAGE)
        if s.placement.mode == "given":
            # measured addresses: one queue, the buffers in the order the NIC fills them
            if s.queues != 1:
                raise LayoutError(f"{self.field}.placement", "placement mode 'given' takes one RX queue")
            given = self.given_addresses(s.buffer_size)
            self.posted = [min(posted, len(given))]
            self.rings = self.given_rings(ring_size, 1)
            self.queue_buffers = [self.map_many(given[:self.posted[0]], [s.buffer_size] * self.posted[0])]
            self.buffers = list(self.queue_buffers[0])
            self.trace_mapped()
            return
        self.posted = [posted] * s.queues
        self.rings = self.alloc_many([ring_size] * s.queues)
        self.queue_buffers = []
        for _ in range(s.queues):
            if self.run.machine.era == "2005":
                # 2.6.13 e1000: dev_alloc_skb(2048 + ...) is a slab object of its own page, data
                # 16 bytes in (kmalloc-4096; assumption: one buffer per page).
                starts = [a + 16 for a in self.alloc_phys_many(PAGE, PAGE, posted)]
            else:
                starts = [a + D.E1000_HEADROOM for a in _frag_slices(self, posted, frag, top_down=True)]
            bufs = self.map_many(starts, [s.buffer_size] * len(starts))
            self.queue_buffers.append(bufs)
            self.buffers += bufs
        self.trace_mapped()

    def report(self, queue: int, slot: int, size: int) -> Generator:
        """Write-back: the descriptor's second 8 bytes, length and status DD|EOP (struct e1000_rx_desc)."""
        wb = struct.pack("<HHBBH", size, 0, 0x03, 0, 0)
        yield from self.write(self.rings[queue], slot * D.RX_DESCRIPTOR_BYTES + 8, wb)


def _frag_size(rx_buffer_len: int) -> int:
    """e1000_frag_len: SKB_DATA_ALIGN(len + NET_SKB_PAD) + SKB_DATA_ALIGN(sizeof(skb_shared_info))."""
    return align_up(rx_buffer_len + D.E1000_HEADROOM, 64) + D.SKB_SHARED_INFO


class VirtioNetRx(RxNic):
    kind = "virtio_net"
    header = 12                  # struct virtio_net_hdr_mrg_rxbuf, then the frame
    spec: VirtioNet

    def place(self) -> None:
        s = self.spec
        n = s.queue_size
        self.posted = [s.posted if s.posted is not None else self.rng.randint(n - D.VIRTIO_REFILL_THRESHOLD, n)
                       for _ in range(s.queues)]
        # Split virtqueue: descriptors (16 N), avail ring (6 + 2 N), then the used ring on the next page.
        self.used_offset = align_up(16 * n + 6 + 2 * n, PAGE)
        ring_size = self.used_offset + align_up(6 + D.VIRTIO_USED_ELEM_BYTES * n, PAGE)
        given: list[int] | None = None
        if s.placement.mode == "given":
            if s.queues != 1:
                raise LayoutError(f"{self.field}.placement", "placement mode 'given' takes one RX queue")
            given = self.given_addresses(s.buffer_size)
            self.posted = [min(self.posted[0], len(given))]
            self.rings = self.given_rings(ring_size, 1)
        else:
            self.rings = self.alloc_many([ring_size] * s.queues)
        self.queue_buffers = []
        for q in range(s.queues):
            addrs = (given[:self.posted[q]] if given is not None
                     else _frag_slices(self, self.posted[q], s.buffer_size, top_down=False))
            bufs = self.map_many(addrs, [s.buffer_size] * len(addrs))
            self.queue_buffers.append(bufs)
            self.buffers += bufs
        self.used_idx = [self.rng.randrange(1 << 16) for _ in range(s.queues)]
        self.trace_mapped()

    def report(self, queue: int, slot: int, size: int) -> Generator:
        """The used ring: an element (id, len), then used->idx."""
        idx = self.used_idx[queue]
        elem = self.used_offset + 4 + D.VIRTIO_USED_ELEM_BYTES * (idx % self.spec.queue_size)
        yield from self.write(self.rings[queue], elem, struct.pack("<II", slot, size))
        self.used_idx[queue] = (idx + 1) & 0xFFFF
        yield from self.write(self.rings[queue], self.used_offset + 2, struct.pack("<H", self.used_idx[queue]))


class NvmeController(DmaEngine):
    kind = "storage"
    finished = "commands_completed"
    spec: StorageController

    def place(self) -> None:
        s = self.spec
        # At probe, on a young machine: the completion queues (io_queue_depth 1024) and the HMB.
        self.rings = self.alloc_many([D.NVME_CQE_BYTES * 1024] * s.queues)
        self.cq_head = [self.rng.randrange(1024) for _ in range(s.queues)]
        chunks = [min(D.NVME_HMB_CHUNK, s.hmb - off) for off in range(0, s.hmb, D.NVME_HMB_CHUNK)]
        self.hmb = [self.alloc(c, _buddy_align(c)) for c in chunks]
        # At the crash: each command's data in page-cache or user pages, scattered (a PRP list).
        pages = -(-s.command_size // PAGE)
        self.buffers = self.alloc_many([min(PAGE, s.command_size - i * PAGE) for i in range(pages)] * s.commands)
        self.commands = [self.buffers[c * pages:(c + 1) * pages] for c in range(s.commands)]
        self.rings += self.hmb
        self.trace_mapped()

    def _completions(self) -> list[int]:
        """When each in-flight command completes: start + lognormal latency."""
        s = self.spec
        mu, sigma = math.log(s.latency_median), math.log(s.latency_p999 / s.latency_median) / Z999
        return sorted(max(s.start, 0) + round(self.rng.lognormvariate(mu, sigma)) for _ in self.commands)

    def traffic(self) -> Generator:
        """The commands complete; the controller keeps using its HMB until it is reset."""
        commands = self.run.env.process(self._commands())
        self.children.append(commands)          # stopped with the device
        if not self.hmb:
            yield commands
            return
        env, period = self.run.env, parse_duration(D.NVME_HMB_PERIOD)
        while True:
            chunk = self.rng.choice(self.hmb)
            off = self.rng.randrange(0, chunk.size - D.NVME_HMB_WRITE + 1, D.NVME_HMB_WRITE)
            yield from self.write(chunk, off, self.payload(D.NVME_HMB_WRITE))
            yield env.timeout(period)

    def _commands(self) -> Generator:
        env = self.run.env
        try:
            for cmd, when in enumerate(self._completions()):
                yield env.timeout(max(0, when - env.now))
                for page in self.commands[cmd]:
                    yield from self.write(page, 0, self.payload(page.size))
                q = cmd % self.spec.queues
                slot, self.cq_head[q] = self.cq_head[q], (self.cq_head[q] + 1) % 1024
                cqe = struct.pack("<IIHHHH", 0, 0, 0, q + 1, cmd & 0xFFFF, 1)    # DW2: sq head/id, DW3: cid, status P=1
                yield from self.write(self.rings[q], slot * D.NVME_CQE_BYTES, cqe)
        except simpy.Interrupt:
            pass


class CyclicEngine(DmaEngine):
    kind = "cyclic"
    spec: CyclicDma

    def place(self) -> None:
        size = self.spec.buffer_size
        self.buffers = [self.alloc(size, _buddy_align(size))]
        self.trace_mapped()

    def traffic(self) -> Generator:
        s, buf, offset = self.spec, self.buffers[0], 0
        chunk = min(s.chunk, buf.size)
        while True:
            n = min(chunk, buf.size - offset)
            yield from self.write(buf, offset, self.payload(n))
            offset = (offset + n) % buf.size
            yield self.run.env.timeout(s.period)


def _buddy_align(size: int) -> int:
    """A contiguous allocation from the buddy allocator is aligned to its order (at most 4 MiB here)."""
    return min(1 << (max(size, PAGE) - 1).bit_length(), 4 * 1024 * 1024)


ENGINES: dict[str, type[DmaEngine]] = {e.kind: e for e in (E1000Rx, VirtioNetRx, NvmeController, CyclicEngine)}


def make_engines(run: CrashRun) -> list[DmaEngine]:
    """Every device's engine, its buffers placed (not yet started)."""
    return [ENGINES[spec.kind](run, i, spec) for i, spec in enumerate(run.machine.cfg.devices)]
