"""The crashing machine: its memory map, where the first kernel put things,
the crashkernel reservation, and the topology. Built once per run."""

from __future__ import annotations

import bisect
import hashlib
import random
from dataclasses import dataclass, field

from kdumpsim import defaults as D
from kdumpsim.config.model import ModelConfig
from kdumpsim.errors import LayoutError
from kdumpsim.machine.allocator import PageAllocator
from kdumpsim.machine.crashkernel import Reservation, reserve_crashkernel
from kdumpsim.machine.ram import PhysicalMemory
from kdumpsim.machine.ranges import FreeRanges, RandomPlacer, Taken, overlaps
from kdumpsim.machine.topology import Topology
from kdumpsim.units import MiB, fmt_size


def derive_seed(*parts: object) -> int:
    """A 64-bit seed from any parts (run seed, component name): stable across
    processes and Python versions, unlike hash()."""
    h = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "little")


@dataclass
class Machine:
    cfg: ModelConfig
    seed: int
    topology: Topology = field(init=False)
    ram_ranges: list[tuple[int, int]] = field(init=False)
    kernel_image: tuple[int, int] = field(init=False)
    kernel_ranges: list[tuple[int, int]] = field(init=False)
    reservation: Reservation = field(init=False)
    crash_notes: list[int] = field(init=False)      # per-CPU note buffer addresses
    hotplug_notes: list[int] = field(init=False)    # the buffers of possible CPUs that are not present
    crash_note_size: int = field(init=False)
    vmcoreinfo_addr: int | None = field(init=False)
    memory: PhysicalMemory = field(init=False)
    first_kernel_free: FreeRanges = field(init=False)

    def __post_init__(self) -> None:
        cfg = self.cfg
        self.arch, self.era = cfg.arch, cfg.era
        self.ncpus = cfg.cpus.count
        self.topology = Topology(cfg)
        self.ram_ranges = [(r.start, r.end + 1) for r in cfg.memory.iomem if r.type == "System RAM"]
        self.page_offset = D.PAGE_OFFSET[(self.arch, self.era)]
        self._node_starts = self._split_nodes()
        start = D.KERNEL_PHYS_START_X86_64 if self.arch == "x86_64" else D.KERNEL_PHYS_START_I386
        size = D.KERNEL_TEXT_SIZE_X86_64 if self.arch == "x86_64" else 4 * MiB
        self.kernel_ranges = [(start, start + size)]
        if cfg.kernel.image is not None:
            self.kernel_ranges = sorted((s, e) for s, e in cfg.kernel.image)
            start, size = self.kernel_ranges[0][0], self.kernel_ranges[-1][1] - self.kernel_ranges[0][0]
        self.kernel_image = (start, start + size)         # its span
        if not self._in_ram(*self.kernel_image):
            where = ("kernel.image puts it there" if cfg.kernel.image is not None
                     else f"{self.arch} loads it at {fmt_size(start)}")
            raise LayoutError("memory.iomem", f"the first kernel at {start:#x}-{start + size - 1:#x} is not in "
                              f"System RAM: {where}, so one System RAM range must cover that")

        self.reservation = reserve_crashkernel(self)
        self.first_kernel_free = FreeRanges(list(self.ram_ranges))
        self.first_kernel_free.remove(0, 1 * MiB)                 # BIOS data, trampoline, ISA holes
        for ks, ke in self.kernel_ranges:
            self.first_kernel_free.remove(ks, ke)
        for span in self.reservation.spans:
            self.first_kernel_free.remove(*span)
        self._place_crash_notes()
        self.cma = self._reserve_cma()
        # The structures crash tools read: page tables, mem_map, log buffer (kdumpsim.firstkernel).
        self.kernel_structs = None
        if self.arch == "x86_64" and self.era == "modern" and cfg.design != "2004":
            from kdumpsim.firstkernel.mm import FirstKernel
            self.kernel_structs = FirstKernel(self)
        # Later, scattered allocations (2004 kexec pages, DMA buffers) share one record of what is taken.
        self.taken = Taken()
        self.page_pool = RandomPlacer(self.first_kernel_free.ranges, self.taken)
        self.allocator = PageAllocator(self)
        self.memory = PhysicalMemory(self.ram_ranges, derive_seed(self.seed, "ram"),
                                     zero=self.reservation.spans)
        if self.kernel_structs is not None:
            self.kernel_structs.install(self.memory)

    # ------------------------------------------------------------------
    @property
    def ram_total(self) -> int:
        return sum(e - s for s, e in self.ram_ranges)

    def _in_ram(self, start: int, end: int) -> bool:
        return any(s <= start and end <= e for s, e in self.ram_ranges)

    def ram_range_of(self, start: int, end: int) -> tuple[int, int] | None:
        for s, e in self.ram_ranges:
            if s <= start and end <= e:
                return (s, e)
        return None

    def node_of(self, addr: int) -> int:
        """Memory node of a physical address: RAM split evenly by address order."""
        return bisect.bisect_right(self._node_starts, addr) - 1 if self._node_starts else 0

    def _split_nodes(self) -> list[int]:
        """First address of each memory node after node 0 (equal shares of RAM)."""
        nodes, share = self.cfg.memory.numa_nodes, self.ram_total // self.cfg.memory.numa_nodes
        starts, seen = [0], 0
        for s, e in self.ram_ranges:
            while len(starts) < nodes and seen + (e - s) > share * len(starts):
                starts.append(s + share * len(starts) - seen)
            seen += e - s
        return starts if nodes > 1 else []

    def clip_to_node(self, start: int, end: int, node: int) -> tuple[int, int]:
        """[start, end) cut to the addresses of memory node `node`."""
        if not self._node_starts:
            return (start, end) if node == 0 else (start, start)
        lo = self._node_starts[node] if node < len(self._node_starts) else end
        hi = self._node_starts[node + 1] if node + 1 < len(self._node_starts) else 1 << 64
        return max(start, lo), min(end, hi)

    def _reserve_cma(self) -> tuple[int, int] | None:
        """crashkernel=SIZE,cma (kernel/crash_reserve.c reserve_crashkernel_cma →
        cma_declare_contiguous): placed top-down in free RAM, CMA_ALIGN aligned
        (placement: assumption). The first kernel's buddy allocator uses it for
        movable pages only, so it leaves the general pool."""
        size = self.cfg.kexec.crashkernel_cma
        if not size:
            return None
        start = self.first_kernel_free.alloc(size, D.CMA_ALIGN, top_down=True)
        if start is None:
            raise LayoutError("kexec.crashkernel_cma", f"no {fmt_size(size)} of free System RAM for the CMA area")
        return (start, start + size)

    def direct_map(self, paddr: int) -> int | None:
        """Kernel virtual address of a physical one in the direct map (None for
        i386 highmem, which has no permanent mapping, paper 4.2)."""
        if self.arch == "i386" and paddr >= D.I386_LOWMEM_LIMIT:
            return None
        return self.page_offset + paddr

    def _place_crash_notes(self) -> None:
        """Where the first kernel keeps each CPU's crash note buffer.

        2005: a static `crash_notes[NR_CPUS]` array of 1 KiB buffers in the
        kernel's .data (paper 3.3, kernel/kexec.c). Modern: a per-cpu buffer in
        each CPU's per-cpu unit (kernel/crash_core.c crash_notes_memory_init),
        and a page-sized vmcoreinfo note buffer (kernel/vmcore_info.c).
        """
        self.crash_note_size = D.CRASH_NOTE_BYTES
        self.hotplug_notes = []
        kstart, kend = self.kernel_image
        if self.cfg.design == "2004":
            # "CPU register states were stored immediately after the backup region" (paper 2.2)
            base = self.reservation.start + D.BACKUP_SIZE_2004
            self.crash_notes = [base + cpu * D.CRASH_NOTE_BYTES for cpu in range(self.ncpus)]
            self.vmcoreinfo_addr = None
            return
        if self.era == "2005":
            base = kstart + (kend - kstart) * 3 // 4
            self.crash_notes = [base + cpu * D.CRASH_NOTE_BYTES for cpu in range(self.ncpus)]
            self.vmcoreinfo_addr = None
            return
        self.crash_note_size = D.CRASH_NOTE_BYTES_MODERN[self.arch]
        unit = 64 * 1024   # a per-cpu unit's size in our layout
        possible = self.cfg.cpus.possible or self.ncpus        # setup_per_cpu_areas: one unit per possible CPU
        units = self.first_kernel_free.alloc(unit * possible, 2 * MiB)
        if units is None:
            raise LayoutError("memory.iomem", f"no room for the per-cpu areas ({fmt_size(unit * possible)}, "
                              "2 MiB aligned) in free System RAM: add RAM or use fewer CPUs")
        notes = [units + cpu * unit + 0x1000 for cpu in range(possible)]
        self.crash_notes, self.hotplug_notes = notes[:self.ncpus], notes[self.ncpus:]
        self.vmcoreinfo_addr = self.first_kernel_free.alloc(D.PAGE_SIZE, D.PAGE_SIZE)
        if self.vmcoreinfo_addr is None:
            raise LayoutError("memory.iomem", "no room for the vmcoreinfo note (one free page of System RAM)")

    def describe_reservation(self) -> str:
        r = self.reservation
        low = f" + low {fmt_size(r.low[1] - r.low[0])} at {r.low[0]:#x}-{r.low[1] - 1:#x}" if r.low else ""
        return f"{fmt_size(r.size)} at {r.start:#x}-{r.end - 1:#x}{low}"

    def overlaps_kernel(self, start: int, end: int) -> bool:
        return any(overlaps((start, end), r) for r in self.kernel_ranges)

    def rng(self, *parts: object) -> random.Random:
        """A component's own RNG, derived from the run seed and its name."""
        return random.Random(derive_seed(self.seed, *parts))
