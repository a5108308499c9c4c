"""The capture kernel in its reservation, over time (docs/SOURCES.md §13).

At purgatory's jump the reservation (and the ,high low region) is the capture
kernel's only RAM. Each use of it has a range and a time window:

    kernel_image    the decompressed kernel (text, data, bss), relocated by
                    KASLR to a random 2 MiB slot clear of the loaded segments
    kernel_memblock mem_map and the early memblock allocations (page tables,
                    percpu, hash tables), taken top-down at start_kernel
    kernel_runtime  slab, page tables and driver allocations from the buddy allocator
    initramfs       the unpacked rootfs (ramfs: never freed)
    swiotlb         the bounce buffers, in the low region when there is RAM above 4 GiB
    dump_buffers    the dump tool's buffers (dd's block, makedumpfile's bitmaps)
    page_cache      the dump file's dirty pages on their way to the disk

The kexec segments are consumed, then freed: the kernel segment and the
parameters once the kernel is decompressed, the initrd once populate_rootfs
has unpacked it. A DMA write into a page matters by what the page is at that
instant: kernel pages -> the capture kernel crashes (`CRASH_KINDS`), the
dump's pages -> the dump file is damaged (`DUMP_KINDS`), a free page -> nothing.
An allocation that finds no room -> out of memory.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kdumpsim import defaults as D
from kdumpsim.crash.dma import wait_until
from kdumpsim.machine.ranges import FreeRanges, align_up
from kdumpsim.names import CAPTURE
from kdumpsim.units import NS_PER_S, KiB, MiB

if TYPE_CHECKING:
    from kdumpsim.config.model import ModelConfig
    from kdumpsim.crash.run import CrashRun

CRASH_KINDS = ("kernel_image", "kernel_memblock", "kernel_runtime", "initramfs")
DUMP_KINDS = ("swiotlb", "dump_buffers", "page_cache")
COLLECTORS = ("dd", "makedumpfile")

# --- sizes (docs/SOURCES.md §13) ---------------------------------------------
# Debian 6.1.0-56's "Memory: ... (14343K kernel code, 2338K rwdata, 9132K rodata,
# 2824K init, 17344K bss ...)": what the decompressed kernel occupies.
KERNEL_IMAGE_6_1 = (14343 + 2338 + 9132 + 2824 + 17344) * KiB
KASLR_ALIGN = 2 * MiB                  # CONFIG_PHYSICAL_ALIGN (x86_64 default)
LOAD_PHYSICAL_ADDR = 16 * MiB          # KASLR picks no slot below it
SECTION_SIZE = 128 * MiB               # x86_64 SECTION_SIZE_BITS 27
MAX_MEMMAP_REGIONS = 4                 # arch/x86/boot/compressed/kaslr.c: more memmap= -> no KASLR
MEMMAP_PER_SECTION = 2 * MiB           # 32768 pages x sizeof(struct page) 64, one vmemmap PMD
# The lab capture kernel's "Memory: 95992K/163820K available (... 62692K reserved)"
# with crashkernel=160M: 62692K - the image (45981K) - its initrd (1724K) - three
# sections' mem_map (6144K) = 8843K of other early memblock allocations (assumption:
# the same at any reservation size), and 163820K - 95992K - 62692K = 5136K already
# taken from the buddy allocator when it printed that line.
EARLY_MEMBLOCK = 8843 * KiB
RUNTIME_AT_MEM_INIT = 5136 * KiB
DRIVER_RUNTIME = 8 * MiB               # slab, page tables, driver rings after device_initcall (assumption)
INITRAMFS_UNPACK_RATIO = 2.72          # lab initrd-capture.gz: 1763109 -> 4794952 bytes (assumption for others)
DD_BUFFER = 1 * MiB                    # dd bs=1M
DD_PROCESS = 2 * MiB                   # busybox dd, stack and libc (assumption)
MAKEDUMPFILE_PROCESS = 4 * MiB         # makedumpfile, libraries, heap besides the bitmaps (assumption)
MAKEDUMPFILE_CYCLIC_MAX = 4 * MiB      # calculate_cyclic_buffer_size: maximum_size
DIRTY_RATIO = 0.20                     # vm.dirty_ratio default: the dump file's dirty page cache
KERNEL_DECOMPRESS_NS = 100_000_000     # purgatory's jump to start_kernel (assumption, within vmcore_init)


def dump_tool_memory(collector: str, ram_total: int) -> int:
    """What the dump tool allocates: dd its block; makedumpfile its two cyclic
    bitmaps, each min(4 MiB, max_mapnr * 2 / 8) (calculate_cyclic_buffer_size;
    the 60 %-of-MemFree bound only shrinks them), plus the process itself."""
    if collector == "dd":
        return DD_BUFFER + DD_PROCESS
    if collector == "makedumpfile":
        max_mapnr = ram_total // D.PAGE_SIZE
        per_bitmap = min(MAKEDUMPFILE_CYCLIC_MAX, max_mapnr * 2 // 8)
        return 2 * per_bitmap + MAKEDUMPFILE_PROCESS
    raise ValueError(f"unknown collector {collector!r} (one of {', '.join(COLLECTORS)})")


def running_image(init_size: int) -> int:
    """The decompressed kernel's size: 6.1's, or less for a kernel whose init_size
    (which bounds it: the setup header's whole-kernel size) is smaller."""
    return min(KERNEL_IMAGE_6_1, init_size) if init_size else KERNEL_IMAGE_6_1


def memmap_size(spans: list[tuple[int, int]]) -> int:
    """vmemmap for the capture kernel's RAM: one 2 MiB block per 128 MiB section it touches
    (plus section 0, which holds the low 640 KiB every capture kernel is given)."""
    sections = {0}
    for s, e in spans:
        sections.update(range(s // SECTION_SIZE, (e - 1) // SECTION_SIZE + 1))
    return len(sections) * MEMMAP_PER_SECTION


@dataclass(frozen=True)
class Need:
    """The capture kernel's memory need, part by part (bytes), against a reservation."""
    parts: dict[str, int]
    low: int              # what must be in the low region (swiotlb)
    boot: int             # the segments kexec loads (the peak while decompressing in place)
    initrd: int = 0       # the loaded initrd: still held while populate_rootfs unpacks it

    @property
    def run(self) -> int:
        return sum(self.parts.values())

    @property
    def peak(self) -> int:
        """The most in use at once: during the unpack the initrd is still loaded (it is
        freed after), and the driver allocations and the dump tool come after that."""
        later = DRIVER_RUNTIME + self.parts["dump_tool"]
        return self.run - later + max(self.initrd, later)

    def describe(self, reservation: int, minimum: int | None = None) -> list[str]:
        """validate's lines: the breakdown, the minimum, and whether `reservation` holds it."""
        mib = lambda n: f"{n / MiB:.1f}M"  # noqa: E731
        p = self.parts
        lines = [f"capture kernel memory: kernel {mib(p['kernel'])} (6.1 image), initramfs {mib(p['initramfs'])} "
                 f"(unpacked, x{INITRAMFS_UNPACK_RATIO} of the initrd: assumption), runtime {mib(p['runtime'])} "
                 f"(mem_map, early memblock, slab and drivers{', swiotlb' if self.low else ''}: partly assumption), "
                 f"dump tool {mib(p['dump_tool'])}, elfcorehdr/other segments {mib(p['segments'])}; "
                 f"the segments kexec loads {mib(self.boot)}"]
        minimum = self.minimum if minimum is None else minimum
        verdict = ("ok" if reservation >= minimum else
                   "TOO SMALL: the capture kernel runs out of memory (outcome capture_oom) or kexec refuses it")
        lines.append(f"minimum    crashkernel={minimum // MiB}M (this model reserves {reservation // MiB}M): {verdict}")
        return lines

    @property
    def minimum(self) -> int:
        """The smallest crashkernel= (MiB-rounded) that holds both the boot and the run."""
        return align_up(max(self.boot, self.peak - self.low), MiB)


def planned_segments(cfg: ModelConfig) -> dict[str, int]:
    """The segments' sizes kexec would load, without loading them (a reservation too
    small for kexec): the kernel at init_size, the initrd, the smallest headers."""
    return {"kernel": align_up(cfg.kexec.capture_kernel_init_size or 0, D.PAGE_SIZE),
            "initrd": align_up(cfg.kexec.initrd_size or 0, D.PAGE_SIZE),
            "elfcorehdr": D.ELFCOREHDR_MIN_MEMSZ, "purgatory": D.PURGATORY_SIZE, "params": D.PARAMS_SIZE}


def capture_need(segs: dict[str, int], spans: list[tuple[int, int]], ram_total: int,
                 collector: str = "dd") -> Need:
    """The capture kernel's need with `collector` as the dump tool, given the loaded
    segments' sizes by name (docs/SOURCES.md §13)."""
    initrd = segs.get("initrd", 0)
    kept = sum(v for k, v in segs.items() if k in ("elfcorehdr", "backup"))
    image = running_image(segs.get("kernel", 0))
    low = D.SWIOTLB_DEFAULT_SIZE if len(spans) > 1 else 0
    unpack = max(0, int(initrd * INITRAMFS_UNPACK_RATIO))
    parts = {
        "kernel": image,
        "initramfs": unpack,
        "runtime": memmap_size(spans) + EARLY_MEMBLOCK + RUNTIME_AT_MEM_INIT + DRIVER_RUNTIME + low,
        "dump_tool": dump_tool_memory(collector, ram_total),
        "segments": kept,
    }
    return Need(parts, low, sum(segs.values()), initrd)


def minimum_crashkernel(segs: dict[str, int], ram_total: int, collector: str = "dd", at: int = 0) -> int:
    """The smallest crashkernel= (MiB-rounded) at `at` that holds its own need: the
    need grows with the reservation (its mem_map), so this is the fixed point."""
    size = MiB
    while (need := capture_need(segs, [(at, at + size)], ram_total, collector).minimum) > size:
        size = need
    return size


@dataclass(frozen=True)
class Use:
    start: int
    end: int
    kind: str
    since: int
    until: int | None = None


@dataclass
class CaptureMemory:
    """The capture kernel's reservation and what each page of it is, over time."""
    run: CrashRun
    jump: int
    collector: str = "dd"
    uses: list[Use] = field(default_factory=list)
    free: FreeRanges = field(init=False)
    hits: dict[str, int] = field(default_factory=dict)      # bytes DMA wrote into each kind while in use
    oom: str | None = None
    kernel_at: int = 0
    _bounds: tuple[int, int] = field(init=False, default=(0, 0))    # lowest/highest capture RAM: on_dma's first test

    def __post_init__(self) -> None:
        m = self.run.machine
        self.spans = list(m.reservation.spans)
        # a crashkernel=,cma area is capture-kernel RAM too (crash_setup_memmap_entries,
        # docs/SOURCES.md §11): its pages are handed out like the reservation's
        self.ram = sorted(self.spans + ([m.cma] if m.cma else []))
        if self.ram:
            self._bounds = (self.ram[0][0], self.ram[-1][1])
        self.free = FreeRanges(list(self.ram))
        for seg in self.run.image.segments:      # in use until consumed (purgatory: done at the jump)
            if seg.name != "purgatory":
                self.free.remove(seg.start, seg.end)
        self.need = capture_need({s.name: s.memsz for s in self.run.image.segments}, self.spans, m.ram_total,
                                 self.collector)
        self.initrd_freed = self.jump + self.run.timing.iommu_init + self._unpack_ns()
        self.decompressed = self.jump + min(KERNEL_DECOMPRESS_NS, self.run.timing.vmcore_init)

    def _unpack_ns(self) -> int:
        seg = self.run.image.segment("initrd")
        return 0 if seg is None else seg.memsz * NS_PER_S // int(self.run.timing.initramfs_unpack_rate)

    def consumed_at(self, segment: str) -> int:
        """When the capture kernel has read a loaded segment for the last time."""
        return self.initrd_freed if segment == "initrd" else self.decompressed

    def _now(self) -> int:
        return int(self.run.env.now)

    # ------------------------------------------------------------ placing
    def _kaslr(self) -> int:
        """choose_random_location: a uniformly random CONFIG_PHYSICAL_ALIGN slot at or
        above LOAD_PHYSICAL_ADDR in free RAM clear of the segments (mem_avoid); none
        fits, `nokaslr`, or more memmap= options than kaslr.c's MAX_MEMMAP_REGIONS (4:
        memmap_too_large turns randomisation off; fewer are avoided, not modelled): the kernel
        decompresses where kexec loaded it."""
        size = align_up(self.need.parts["kernel"], KASLR_ALIGN)
        slots = []
        for s, e in self.free.ranges:
            first = align_up(max(s, LOAD_PHYSICAL_ADDR), KASLR_ALIGN)
            if first + size <= e:
                slots.append((first, (e - size - first) // KASLR_ALIGN + 1))
        total = sum(n for _, n in slots)
        seg = self.run.image.segment("kernel")
        words = self.run.image.cmdline.split()
        if not total or "nokaslr" in words or sum(w.startswith("memmap=") for w in words) > MAX_MEMMAP_REGIONS:
            return seg.start if seg is not None else self.spans[0][0]
        k = self.run.machine.rng("capture_kaslr").randrange(total)
        for first, n in slots:
            if k < n:
                addr = first + k * KASLR_ALIGN
                self.free.remove(addr, addr + self.need.parts["kernel"])   # the slot's tail past _end stays free
                return addr
            k -= n
        raise AssertionError("unreachable")

    def _take(self, kind: str, size: int, lo: int = 0, hi: int = 1 << 64) -> bool:
        """Page-allocator pages for `kind`, highest free pages first (assumption),
        split over free ranges as the buddy allocator's pages are; False: no room."""
        size = align_up(size, D.PAGE_SIZE)
        room = sum(max(0, min(e, hi) - max(s, lo)) for s, e in self.free.ranges)
        if room < size:
            return False
        now, left = self._now(), size
        for s, e in reversed(list(self.free.ranges)):
            s, e = max(s, lo), min(e, hi)
            if left == 0 or e <= s:
                continue
            n = min(left, e - s)
            self.free.remove(e - n, e)
            self.uses.append(Use(e - n, e, kind, now))
            left -= n
        return True

    def _release(self, kind: str) -> None:
        now = self._now()
        for i, u in enumerate(self.uses):
            if u.kind == kind and u.until is None:
                self.uses[i] = Use(u.start, u.end, u.kind, u.since, now)
                self.free.ranges = sorted([*self.free.ranges, (u.start, u.end)])

    def _free_segment(self, name: str) -> None:
        seg = self.run.image.segment(name)
        if seg is not None:
            self.free.ranges = sorted([*self.free.ranges, (seg.start, seg.end)])

    def _alloc(self, kind: str, size: int, what: str, low: bool = False) -> bool:
        hi = self.spans[-1][1] if low and len(self.spans) > 1 else 1 << 64
        lo = self.spans[-1][0] if low and len(self.spans) > 1 else 0
        if self._take(kind, size, lo, hi):
            return True
        self.oom = what
        self.run.trace(self._now(), CAPTURE, "capture_oom", what=what, bytes=size,
                       free=self.free.total(), need=self.need.run, reservation=sum(e - s for s, e in self.spans))
        self.run.stop_capture("capture_oom")
        return False

    # ------------------------------------------------------------ the boot
    def boot(self) -> Generator:
        """The capture kernel's own allocations at their moments (docs/SOURCES.md §13)."""
        env, t, n = self.run.env, self.run.timing, self.need.parts
        self.kernel_at = self._kaslr()
        size = self.need.parts["kernel"]
        self.uses.append(Use(self.kernel_at, self.kernel_at + size, "kernel_image", self._now()))
        self.run.trace(self._now(), CAPTURE, "kernel_relocated", addr=self.kernel_at, bytes=size)
        yield wait_until(env, self.decompressed)
        self._free_segment("kernel")
        self.free.remove(self.kernel_at, self.kernel_at + size)     # decompressed in place: still the kernel
        self._free_segment("params")
        early = memmap_size(self.ram) + EARLY_MEMBLOCK
        if not self._alloc("kernel_memblock", early, "mem_map and early memblock allocations"):
            return
        if self.need.low and not self._alloc("swiotlb", self.need.low, "swiotlb in the low region", low=True):
            return
        if not self._alloc("kernel_runtime", RUNTIME_AT_MEM_INIT, "the kernel's allocations at mem_init"):
            return
        yield wait_until(env, self.jump + t.iommu_init)            # rootfs_initcall populate_rootfs
        if not self._alloc("initramfs", n["initramfs"], "the unpacked initramfs"):
            return
        yield wait_until(env, self.initrd_freed)
        self._free_segment("initrd")
        seg = self.run.image.segment("initrd")
        self.run.trace(self._now(), CAPTURE, "initrd_freed", bytes=seg.memsz if seg is not None else 0)
        yield wait_until(env, self.jump + t.driver_init)
        self._alloc("kernel_runtime", DRIVER_RUNTIME, "slab and driver allocations")

    def dump_start(self, dump_bytes: int) -> bool:
        """The dump tool starts: its buffers, and the dump file's dirty page cache
        (vm.dirty_ratio of what is free, at most the dump)."""
        if not self._alloc("dump_buffers", self.need.parts["dump_tool"], f"the dump tool ({self.collector})"):
            return False
        cache = min(dump_bytes, int(self.free.total() * DIRTY_RATIO))
        return self._alloc("page_cache", cache, "the dump file's page cache")

    def dump_end(self) -> None:
        self._release("dump_buffers")
        self._release("page_cache")

    # ------------------------------------------------------------ DMA
    def kind_at(self, addr: int, size: int, time: int) -> list[tuple[str, int]]:
        """What [addr, addr+size) is at `time`: (kind, bytes) of each use it overlaps."""
        out = []
        for u in self.uses:
            if u.since <= time and (u.until is None or time < u.until) and u.start < addr + size and addr < u.end:
                out.append((u.kind, min(u.end, addr + size) - max(u.start, addr)))
        return out

    def on_dma(self, addr: int, size: int, time: int, actor: str) -> None:
        """A device wrote [addr, addr+size) at `time` (the write path calls this)."""
        lo, hi = self._bounds
        if time < self.jump or addr + size <= lo or addr >= hi \
                or not any(s < addr + size and addr < e for s, e in self.ram):
            return
        for kind, n in self.kind_at(addr, size, time):
            first = kind not in self.hits
            self.hits[kind] = self.hits.get(kind, 0) + n
            if first:
                self.run.trace(time, actor, "dma_into_capture_memory", addr=addr, bytes=n, hit=kind,
                               effect="capture_kernel_crashed" if kind in CRASH_KINDS else "dump_file_corrupted")
            if kind in CRASH_KINDS and self.run.capture_crashed is None:
                self.run.capture_crashed = kind
                self.run.trace(time, CAPTURE, "capture_kernel_crashed", hit=kind, by=actor, addr=addr)
                self.run.stop_capture("capture_kernel_crashed")

    @property
    def dump_file_damage(self) -> int:
        return sum(n for k, n in self.hits.items() if k in DUMP_KINDS)
