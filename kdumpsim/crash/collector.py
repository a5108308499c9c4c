"""The dump collector: what reads /proc/vmcore, in which order, and what it keeps.

    dd             every file byte in file order at the dump throughput (VmcoreCopy)
    makedumpfile   -d DUMP_LEVEL: reads mem_map first, then only the kept pages,
                   in page-frame order (MakedumpfileCopy)

makedumpfile (docs/SOURCES.md §15; makedumpfile.c
create_dump_bitmap, create_2nd_bitmap, __exclude_unnecessary_pages,
write_kdump_pages_and_bitmap_cyclic, calculate_cyclic_buffer_size):
- the bitmaps of max_mapnr pfns fit its 4 MiB cyclic buffer up to 16 Mi pfns
  (64 GiB): one pass. Above, it works cycle by cycle (4 MiB * 8 pfns each),
  after a first pass over all of mem_map to count the dumpable pages.
- per cycle it reads the struct pages of every pfn in the PT_LOADs, in pfn
  order, and excludes free (buddy), cache, cache-private and user pages by
  the dump level; then it reads the remaining pages in pfn order and writes
  them (kdump-compressed, -l): a page read as all zeros is written as the
  one shared zero page (-d bit 1), so zero pages are read but not kept.
- cost: the struct page bytes and the pages it reads, at the model's dump
  throughput (assumption: makedumpfile's per-byte /proc/vmcore read cost is
  the same as dd's; compressing and writing overlap the reads).

A page makedumpfile excludes is not in the dump: DMA into it is not dump
damage. DMA into mem_map before makedumpfile reads it changes which pages
it keeps.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from kdumpsim import defaults as D
from kdumpsim.firstkernel import mm as FK
from kdumpsim.formats.vmcorefile import VmcoreLayout
from kdumpsim.units import NS_PER_S, transfer_ns

if TYPE_CHECKING:
    from kdumpsim.firstkernel.mm import FirstKernel
    from kdumpsim.machine.ram import PhysicalMemory

PAGE = D.PAGE_SIZE
SPAGE = D.STRUCT_PAGE_SIZE
BLOCK = FK.PAGES_PER_SECTION                  # pfns per kept-count block (one section)

# makedumpfile.h dump level bits
DL_EXCLUDE_ZERO, DL_EXCLUDE_CACHE, DL_EXCLUDE_CACHE_PRI, DL_EXCLUDE_USER_DATA, DL_EXCLUDE_FREE = 1, 2, 4, 8, 16
CYCLIC_BUFFER_MAX = 4 << 20                   # calculate_cyclic_buffer_size: maximum_size
MAX_ORDER_FREE_AREA = 11                      # ARRAY_LENGTH(zone.free_area), 6.1 (MAX_ORDER 11)


@dataclass(frozen=True)
class VmcoreCopy:
    """dd: /proc/vmcore in file order; file offset o is read at start + o / throughput."""
    layout: VmcoreLayout
    start: int            # ns
    throughput: float     # bytes/s
    collector = "dd"

    def read_time(self, offset: int) -> int:
        return self.start + offset * NS_PER_S // int(self.throughput)

    def kept(self, offset: int) -> bool:
        return True

    @property
    def end(self) -> int:
        return self.start + transfer_ns(self.layout.size, self.throughput)


def excluded_classes(dump_level: int) -> set[int]:
    """The page classes (kdumpsim.firstkernel.mm) whose struct page makes
    makedumpfile exclude them at this dump level (zero pages: by content)."""
    out = set()
    if dump_level & DL_EXCLUDE_FREE:
        out.add(FK.FREE)
    if dump_level & (DL_EXCLUDE_CACHE | DL_EXCLUDE_CACHE_PRI):
        out.add(FK.CACHE)
    if dump_level & DL_EXCLUDE_CACHE_PRI:
        out.add(FK.CACHE_PRIVATE)
    if dump_level & DL_EXCLUDE_USER_DATA:
        out.add(FK.USER)
    return out


def struct_page_verdict(words: tuple[int, ...], pg: dict[str, int], dump_level: int) -> tuple[bool, int]:
    """(excluded, pages) for one struct page as read: makedumpfile's
    __exclude_unnecessary_pages tests, in its order (page_is_buddy_v3,
    is_cache_page, isPrivate, isAnon, isSlab). `pages`: how many pfns the
    verdict covers (a free buddy page of order k: 2**k)."""
    flags, compound_head, mapping, private = words[0], words[1], words[3], words[5]
    mapcount = words[6] & 0xFFFF_FFFF
    mapcount = mapcount - (1 << 32) if mapcount & 0x8000_0000 else mapcount
    slab = bool(flags >> pg["slab"] & 1)
    if compound_head & 1:                                     # a tail page: decided with its head
        return False, 1
    if dump_level & DL_EXCLUDE_FREE and not slab and mapcount == FK.PAGE_BUDDY_MAPCOUNT_VALUE:
        if private >= MAX_ORDER_FREE_AREA:                    # "Invalid free page order": kept
            return False, 1
        return True, 1 << private
    cache = bool(flags >> pg["lru"] & 1) or bool(flags >> pg["swapbacked"] & 1 and flags >> pg["swapcache"] & 1)
    anon = bool(mapping & 1) and not slab
    private_flag = bool(flags >> pg["private"] & 1)
    if dump_level & DL_EXCLUDE_CACHE and cache and not private_flag and not anon:
        return True, 1
    if dump_level & DL_EXCLUDE_CACHE_PRI and cache and not anon:
        return True, 1
    if dump_level & DL_EXCLUDE_USER_DATA and anon:
        return True, 1
    return False, 1


@dataclass
class _Cycle:
    lo: int                     # pfns [lo, hi)
    hi: int
    memmap_start: int = 0       # ns: its struct pages are read from here
    pages_start: int = 0        # ns: its kept pages are read from here
    decided: bool = False
    block_kept: dict[int, int] = field(default_factory=dict)     # block -> pages makedumpfile reads
    zero_class: int = 0         # of those, class-zero pages (all zeros unless something wrote them)
    prefix: list[int] = field(default_factory=list)               # kept pages before each block of the cycle


@dataclass
class _Block:
    """One block's pfns as makedumpfile sees them (for the overrides known when built)."""
    cls: np.ndarray             # page class (kdumpsim.firstkernel.mm) of the unmodified first kernel
    kept: np.ndarray            # read by makedumpfile (in the PT_LOADs, not excluded by struct page)
    count: int                  # kept pages in the block
    cum: np.ndarray | None = None   # kept pages up to and including each pfn (built when asked)


BLOCK_CACHE = 128               # blocks kept built (64-192 KiB each): memory does not grow with RAM
DECIDE_GROUP = 8                # blocks decide builds at once (fewer numpy calls); a cached block keeps
                                # its run's arrays (512 KiB), so at most 17 runs: still flat in RAM size


class MakedumpfileCopy:
    """makedumpfile -d dump_level reading /proc/vmcore (see the module doc).
    Built when the copy starts; `decide(cycle)` runs once simulated time has
    passed the cycle's mem_map read (the capture process calls it), so the
    struct pages are read as DMA left them then.

    Cost: a block's classes, keep mask and running kept count are built once
    (vectorised) and cached; a page's all-zeros test at its read time is
    made once; struct pages are re-judged only in mem_map pages DMA wrote."""

    collector = "makedumpfile"

    def __init__(self, layout: VmcoreLayout, start: int, throughput: float, k: FirstKernel,
                 mem: PhysicalMemory, dump_level: int):
        self.layout, self.start, self.throughput = layout, start, throughput
        self.k, self.mem, self.dump_level = k, mem, dump_level
        self._excluded_set = excluded_classes(dump_level)
        self.excluded = np.array(sorted(self._excluded_set), dtype=np.uint8)
        self._excluded_lut = np.zeros(256, dtype=bool)
        self._excluded_lut[self.excluded] = True
        # kept by class: bit c set when class c is not excluded (classes are 0..6)
        self._keep_bits = np.uint8(sum(1 << c for c in range(FK.RESERVED + 1) if c not in self._excluded_set))
        self.page_ns = PAGE * NS_PER_S / throughput
        self.spage_ns = SPAGE * NS_PER_S / throughput
        # The pfns makedumpfile dumps: those whose first byte is in a PT_LOAD (is_in_segs).
        spans = sorted({(-(-c.origin // PAGE), -(-(c.origin + c.size) // PAGE)) for c in layout.chunks})
        self.spans = _merge(spans)
        self._span_starts = [a for a, _ in self.spans]
        self._span_prefix = [int(x) for x in np.cumsum([0] + [b - a for a, b in self.spans])]
        self._chunk_offsets = [c.offset for c in layout.chunks]
        max_mapnr = self.spans[-1][1] if self.spans else 0
        per_cycle = CYCLIC_BUFFER_MAX * 8
        cyclic = max_mapnr * 2 > per_cycle          # both bitmaps must fit the buffer for one pass
        step = per_cycle if cyclic else max(max_mapnr, 1)
        self.cycles = [_Cycle(lo, min(lo + step, max_mapnr)) for lo in range(0, max_mapnr, step)]
        self._cycle_los = [c.lo for c in self.cycles]
        self.cyclic = cyclic
        # get_num_dumpable_cyclic: in cyclic mode all of mem_map is read once to count first.
        self.count_pass_end = start + int(self.in_segs(0, max_mapnr) * self.spage_ns) if cyclic else start
        self.overrides: dict[int, bool] = {}        # pfn -> excluded, where mem_map as read says otherwise
        self.struct_pages_changed = 0
        self._overridden: dict[int, set[int]] = {}  # block -> its pfns in overrides
        self._blocks: dict[int, _Block] = {}        # built blocks (bounded cache)
        self._painted: tuple[int, bool] = (-1, False)   # (allocations seen, page_classes_range exact)
        self._zero_at: dict[tuple[int, int], bool] = {}  # (pfn, read time) -> read as all zeros
        self._zero: int | None = None
        self._settled = not self.cycles             # every cycle decided: read times are fixed
        self._read_at: dict[int, int] = {}          # pfn -> read time, once settled
        self._written_read_at: dict[int, int] | None = None  # the same for written pages makedumpfile reads

    def begin(self, c: _Cycle, now: int) -> None:
        """Cycle c starts now: its struct pages, then its pages."""
        c.memmap_start = now
        c.pages_start = now + int(self.in_segs(c.lo, c.hi) * self.spage_ns)

    # ------------------------------------------------------------ pfns in the dump
    def in_segs(self, lo: int, hi: int) -> int:
        """How many dumped pfns lie in [lo, hi)."""
        return self._rank(hi) - self._rank(lo)

    def _rank(self, pfn: int) -> int:
        i = bisect.bisect_right(self._span_starts, pfn) - 1
        if i < 0:
            return 0
        a, b = self.spans[i]
        return self._span_prefix[i] + min(pfn, b) - a

    def is_dumped(self, pfn: int) -> bool:
        i = bisect.bisect_right(self._span_starts, pfn) - 1
        return i >= 0 and pfn < self.spans[i][1]

    def cycle_of(self, pfn: int) -> _Cycle:
        return self.cycles[min(len(self.cycles) - 1, bisect.bisect_right(self._cycle_los, pfn) - 1)]

    def memmap_read_time(self, pfn: int) -> int:
        c = self.cycle_of(pfn)
        return c.memmap_start + int(self.in_segs(c.lo, pfn) * self.spage_ns)

    # ------------------------------------------------------------ the keep decision
    def decide(self, c: _Cycle) -> None:
        """Read the cycle's struct pages (as they are at their read times) and
        count the pages makedumpfile will read, per block (runs of up to
        DECIDE_GROUP blocks holding dumped pfns built at once)."""
        self._struct_page_overrides(c)
        self._blocks.clear()
        run: list[int] = []
        for b in range(c.lo // BLOCK, -(-c.hi // BLOCK)):
            if self.in_segs(b * BLOCK, (b + 1) * BLOCK):
                run.append(b)
                if len(run) == DECIDE_GROUP:
                    self._count(c, run)
                    run = []
            else:
                self._count(c, run)
                run = []
                c.block_kept[b] = 0
        self._count(c, run)
        c.prefix = [int(x) for x in np.cumsum([0] + [c.block_kept[b] for b in sorted(c.block_kept)])]
        c.decided = True
        self._settled = all(c.decided for c in self.cycles)

    def _count(self, c: _Cycle, run: list[int]) -> None:
        """Blocks run (consecutive) built: their kept pages and class-zero kept pages counted."""
        if not run:
            return
        cls, kept, blocks = self._build(run[0], len(run))
        for b, blk in zip(run, blocks):
            c.block_kept[b] = blk.count
        c.zero_class += int(np.count_nonzero(kept & (cls == FK.ZERO)))

    def _struct_page_overrides(self, c: _Cycle) -> None:
        k, mem, start = self.k, self.mem, self.k.memmap
        if start is None:                  # FirstKernel refuses a machine without one
            return
        end = start + k.nsections * FK.SECTION_MEMMAP
        sections = k.sections_array()
        skip_until = -1
        for mpfn in mem.touched_in(start, end):
            page_at = _PageAt(mem, mpfn)
            truth = page_at(0)
            base = mpfn * PAGE
            for addr in range(max(start, base), min(end, base + PAGE), SPAGE):
                idx = (addr - start) // SPAGE
                pfn = int(sections[idx // FK.PAGES_PER_SECTION]) * FK.PAGES_PER_SECTION + idx % FK.PAGES_PER_SECTION
                if not (c.lo <= pfn < c.hi) or not self.is_dumped(pfn) or pfn <= skip_until:
                    continue
                off = addr - base
                seen = page_at(self.memmap_read_time(pfn))[off:off + SPAGE]
                if seen == truth[off:off + SPAGE]:
                    continue
                self.struct_pages_changed += 1
                excluded, n = struct_page_verdict(np.frombuffer(seen, "<u8").tolist(), k.pg, self.dump_level)
                for p in range(pfn, min(pfn + n, c.hi)):
                    if self.is_dumped(p):
                        self.overrides[p] = excluded
                        self._overridden.setdefault(p // BLOCK, set()).add(p)
                skip_until = pfn + n - 1          # a buddy block's struct pages are not read again

    def _classes(self, lo: int, hi: int) -> np.ndarray:
        """page_classes of pfns [lo, hi): painted ranges where that is exact."""
        taken = getattr(self.k.m, "taken", None)
        n = len(taken.starts) if taken is not None else 0
        if self._painted[0] != n:
            self._painted = (n, self.k.ranges_disjoint())
        if self._painted[1]:
            return self.k.page_classes_range(lo, hi)
        return self.k.page_classes(np.arange(lo, hi, dtype=np.uint64))

    def _block(self, b: int) -> _Block:
        """Block b built: classes, pfns makedumpfile reads, their running count."""
        blk = self._blocks.get(b)
        if blk is None:
            blk = self._build(b, 1)[2][0]
        return blk

    def _build(self, first: int, n: int) -> tuple[np.ndarray, np.ndarray, list[_Block]]:
        """Blocks first .. first+n-1 built at once and cached (each a view of
        the same arrays): their pfns' classes and kept mask, and the blocks."""
        lo, hi = first * BLOCK, (first + n) * BLOCK
        cls = self._classes(lo, hi)
        kept8 = np.right_shift(self._keep_bits, cls)          # not excluded by class: _excluded_lut
        kept8 &= 1
        kept = kept8.view(bool)
        pos = lo                                              # pfns before pos: in a span, or cleared
        for i in range(max(0, bisect.bisect_right(self._span_starts, lo) - 1), len(self.spans)):
            a, e = self.spans[i]
            if a >= hi:
                break
            if a > pos:
                kept[pos - lo:a - lo] = False
            pos = max(pos, e)
        if pos < hi:
            kept[pos - lo:] = False
        blocks = []
        for b in range(first, first + n):
            for p in self._overridden.get(b, ()):
                kept[p - lo] = not self.overrides[p]
            at = slice((b - first) * BLOCK, (b - first + 1) * BLOCK)
            blk = _Block(cls[at], kept[at], int(np.count_nonzero(kept[at])))
            if len(self._blocks) >= BLOCK_CACHE:
                self._blocks.pop(next(iter(self._blocks)))
            self._blocks[b] = blk
            blocks.append(blk)
        return cls, kept, blocks

    def read_by_makedumpfile(self, pfn: int) -> bool:
        """In the second bitmap: makedumpfile reads the page (zero pages included)."""
        if not self.is_dumped(pfn):
            return False
        if pfn in self.overrides:
            return not self.overrides[pfn]
        return not self._excluded_lut[self._block(pfn // BLOCK).cls[pfn % BLOCK]]

    def page_read_time(self, pfn: int) -> int:
        """When makedumpfile reads page pfn (an excluded page: when its struct page was read)."""
        if self._settled:
            at = self._read_at.get(pfn)
            if at is None:
                at = self._read_at[pfn] = self._page_read_time(pfn)
            return at
        return self._page_read_time(pfn)

    def _page_read_time(self, pfn: int) -> int:
        if not self.read_by_makedumpfile(pfn):
            return self.memmap_read_time(pfn)
        c = self.cycle_of(pfn)
        if not c.decided:
            self.decide(c)
        b = pfn // BLOCK
        blk = self._block(b)
        if blk.cum is None:
            blk.cum = np.cumsum(blk.kept.view(np.uint8), dtype=np.int32)
        before = c.prefix[b - c.lo // BLOCK] + int(blk.cum[pfn % BLOCK]) - 1     # pfn itself is kept
        return c.pages_start + int(before * self.page_ns)

    def _zero_when_read(self, pfn: int) -> bool:
        """Page pfn (one makedumpfile reads) is all zeros at its read time."""
        at = self.page_read_time(pfn)
        z = self._zero_at.get((pfn, at))
        if z is None:
            z = self._zero_at[(pfn, at)] = _is_zero(self.mem.page(pfn, at))
        return z

    def settled(self) -> bool:
        """Every cycle decided: what makedumpfile reads, and when, is fixed."""
        return self._settled

    def read_kept_page(self, pfn: int) -> tuple[bytes | None, int]:
        """(page pfn as makedumpfile read it, its read time); None if the page
        is not in the dump (excluded, or read as all zeros)."""
        at = self._written_read_times().get(pfn)
        if at is None:
            if not self.read_by_makedumpfile(pfn):
                return None, 0
            at = self.page_read_time(pfn)
        page = self.mem.read(pfn * PAGE, PAGE, at)
        if self.dump_level & DL_EXCLUDE_ZERO:
            z = self._zero_at.get((pfn, at))
            if z is None:
                z = self._zero_at[(pfn, at)] = _is_zero(page)
            if z:
                return None, at
        return page, at

    # ------------------------------------------------------------ the VmcoreCopy interface
    def pfn_at(self, offset: int) -> int:
        i = bisect.bisect_right(self._chunk_offsets, offset) - 1
        ch = self.layout.chunks[max(i, 0)]
        return (ch.origin + offset - ch.offset) // PAGE

    def read_time(self, offset: int) -> int:
        return self.page_read_time(self.pfn_at(offset))

    def kept(self, offset: int) -> bool:
        """The page is in the dump: read, and not all zeros when read."""
        pfn = self.pfn_at(offset)
        if not self.read_by_makedumpfile(pfn):
            return False
        if not self.dump_level & DL_EXCLUDE_ZERO:
            return True
        return not self._zero_when_read(pfn)

    def cycle_end(self, c: _Cycle) -> int:
        if not c.decided:
            self.decide(c)
        return c.pages_start + int(c.prefix[-1] * self.page_ns)

    def run_all(self) -> None:
        """Schedule and decide every cycle at once (outside a simulation: tests, tools)."""
        t = self.count_pass_end
        for c in self.cycles:
            if not c.decided:
                self.begin(c, t)
                self.decide(c)
            t = self.cycle_end(c)

    @property
    def end(self) -> int:
        return self.cycle_end(self.cycles[-1]) if self.cycles else self.start

    def dumpable(self, lo: int, hi: int) -> np.ndarray:
        """In the dump pfns [lo, hi): read, and not all zeros when read (one bool a pfn)."""
        out = np.zeros(hi - lo, dtype=bool)
        for b in range(lo // BLOCK, -(-hi // BLOCK)):
            a, e = max(lo, b * BLOCK), min(hi, (b + 1) * BLOCK)
            blk = self._block(b)
            mask = blk.kept[a - b * BLOCK:e - b * BLOCK].copy()
            if self.dump_level & DL_EXCLUDE_ZERO:
                mask &= blk.cls[a - b * BLOCK:e - b * BLOCK] != FK.ZERO
                for p in self.mem.touched_in(a * PAGE, e * PAGE):
                    if self.read_by_makedumpfile(p):
                        mask[p - a] = not self._zero_when_read(p)
            out[a - lo:e - lo] = mask
        return out

    # ------------------------------------------------------------ counts
    def pages_read(self) -> int:
        return int(sum(c.prefix[-1] for c in self.cycles if c.decided))

    def zero_pages(self) -> int:
        """Pages read as all zeros (written as the shared zero page): the
        class-zero pages read, corrected for pages something wrote."""
        if not self.dump_level & DL_EXCLUDE_ZERO:
            return 0
        if self._zero is not None:
            return self._zero
        n = sum(c.zero_class for c in self.cycles if c.decided)
        touched = self.mem.touched_pfns()
        # Settled, asking in any order gives the same answers: pick the pages
        # makedumpfile read block by block. Otherwise a page's read time may
        # decide its cycle, which changes the later answers: one by one.
        if self.settled():
            n += self._zero_correction(self._read_among(touched))
        else:
            for pfn in touched:
                if self.read_by_makedumpfile(pfn):
                    was_zero = self._block(pfn // BLOCK).cls[pfn % BLOCK] == FK.ZERO
                    n += int(self._zero_when_read(pfn)) - int(was_zero)
        if all(c.decided for c in self.cycles):
            self._zero = n
        return n

    def _written_read_times(self) -> dict[int, int]:
        """Once settled: the read time of every written page makedumpfile
        reads, computed at once (page_read_time's arithmetic, vectorised)."""
        if self._written_read_at is not None:
            return self._written_read_at
        if not self._settled:
            return {}
        pfns = np.array(self._read_among(self.mem.touched_pfns()), dtype=np.int64)
        times = np.empty(len(pfns), dtype=np.int64)
        lo = 0
        while lo < len(pfns):
            b = int(pfns[lo]) // BLOCK
            hi = int(np.searchsorted(pfns, (b + 1) * BLOCK))
            c = self.cycle_of(b * BLOCK)
            kept_at = np.flatnonzero(self._block(b).kept)
            before = np.searchsorted(kept_at, pfns[lo:hi] - b * BLOCK) + c.prefix[b - c.lo // BLOCK]
            times[lo:hi] = c.pages_start + (before * self.page_ns).astype(np.int64)
            lo = hi
        self._written_read_at = dict(zip(pfns.tolist(), times.tolist()))
        self._read_at.update(self._written_read_at)
        return self._written_read_at

    def _read_among(self, pfns: list[int]) -> list[int]:
        """The sorted pfns makedumpfile reads, block by block."""
        arr = np.array(pfns, dtype=np.int64)
        out: list[int] = []
        for a, e in self.spans:
            lo, hi = np.searchsorted(arr, [a, e])
            while lo < hi:
                b = int(arr[lo]) // BLOCK
                stop = min(hi, int(np.searchsorted(arr, (b + 1) * BLOCK)))
                part = arr[lo:stop]
                out += part[self._block(b).kept[part - b * BLOCK]].tolist()
                lo = stop
        return out

    def keep_set_changed(self) -> int:
        """Pages whose fate mem_map as read decided otherwise than mem_map at the panic."""
        if not self.overrides:
            return 0
        pfns = np.array(sorted(self.overrides), dtype=np.uint64)
        base = np.isin(self.k.page_classes(pfns), self.excluded)
        return int(sum(b != self.overrides[int(p)] for p, b in zip(pfns, base)))

    def kept_read_times(self, pfns: list[int]) -> list[int | None]:
        """Once settled: when makedumpfile reads each of `pfns` (None: it does
        not read it), as read_kept_page finds it; the written pages' times come
        from one vectorised pass."""
        known = self._written_read_times()
        out: list[int | None] = []
        for pfn in pfns:
            at = known.get(pfn)
            if at is None and self.read_by_makedumpfile(pfn):
                at = self.page_read_time(pfn)
            out.append(at)
        return out

    def remember_zero_tests(self, pfns: list[int], times: list[int], zero: list[bool]) -> None:
        """All-zeros tests of pages `pfns` as read at `times`, made elsewhere
        (the metrics build those pages anyway): zero_pages need not read them again."""
        self._zero_at.update(zip(zip(pfns, times), zero))

    def _zero_correction(self, read: list[int]) -> int:
        """Once settled, for the sorted written pages makedumpfile reads
        (`read`): those read as all zeros less those of class zero (zero_pages'
        per-page correction, the class test one block at a time)."""
        n = sum(self._zero_when_read(pfn) for pfn in read)
        arr = np.array(read, dtype=np.int64)
        lo = 0
        while lo < len(arr):
            b = int(arr[lo]) // BLOCK
            hi = int(np.searchsorted(arr, (b + 1) * BLOCK))
            n -= int(np.count_nonzero(self._block(b).cls[arr[lo:hi] - b * BLOCK] == FK.ZERO))
            lo = hi
        return n


class _PageAt:
    """One page's content at read times, each distinct content read once: it
    changes only at the times something wrote it."""

    def __init__(self, mem: PhysicalMemory, pfn: int):
        self.mem, self.pfn = mem, pfn
        writes = mem.writes_to(pfn)
        self.times = sorted({w.time for w in writes}) if writes else None
        self._seen: dict[int, bytes | memoryview] = {}

    def __call__(self, at: int) -> bytes | memoryview:
        key = bisect.bisect_right(self.times, at) if self.times is not None else at
        page = self._seen.get(key)
        if page is None:
            page = self._seen[key] = self.mem.page(self.pfn, at)
        return page


_ZERO_PAGE = bytes(PAGE)


def _is_zero(page: bytes | memoryview) -> bool:
    data = bytes(page)
    return data == _ZERO_PAGE if len(data) == PAGE else not data.strip(b"\0")


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in spans:
        if a >= b:
            continue
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out
