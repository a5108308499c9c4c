"""The first kernel's own data structures in its RAM, where crash tools look
for them (issue #8; x86_64, modern era: 6.1, or 4.18 for the older log format).

What the dump holds and where (physical; `_stext` is the kernel image's start,
16 MiB, mapped at __START_KERNEL_map + 16 MiB, phys_base 0, no KASLR):

  _stext + 0x1C00000   swapper_pg_dir = init_top_pgt (PGD, 4-level)
  _stext + 0x1C01000.. early allocations ("brk", 255 pages): the other page
                       tables, the mem_section root array and section pages
  _stext + 0x1D00000   init_uts_ns (struct uts_namespace)
  _stext + 0x1D01000   small .data variables: prb / log_buf pointers, indices,
                       clear_seq, node_online_map, vmap_area_list
  _stext + 0x1D02000   node_data[MAX_NUMNODES]
  _stext + 0x1D04000   printk_rb_static; descs, infos, __log_buf after it
  top of RAM           struct page array (vmemmap, one 2 MiB block per
                       present 128 MiB section) and each node's pglist_data

The page tables (arch/x86/kernel/head_64.S, arch/x86/mm/init_64.c): the
direct map with 1 GiB pages over every GiB holding RAM; the kernel text
through level3_kernel_pgt / level2_kernel_pgt with 2 MiB pages over the
image; vmemmap (VMEMMAP_START) with a 2 MiB page per present section
(mm/sparse-vmemmap.c vmemmap_populate_hugepages).

The struct page array is too big to store (64 bytes per 4 KiB page): it is
computed content, a function of the page frame number (see `page_classes`
and `struct_pages`), as is the content of the pages it calls zero. Everything
else is written at boot (time < 0, actor "kernel").
"""

from __future__ import annotations

import bisect
import hashlib
import math
import struct
from typing import TYPE_CHECKING

import numpy as np

from kdumpsim import defaults as D
from kdumpsim.errors import LayoutError
from kdumpsim.units import GiB, MiB, parse_duration

if TYPE_CHECKING:
    from kdumpsim.machine.layout import Machine
    from kdumpsim.machine.ram import PhysicalMemory

PAGE = D.PAGE_SIZE
SECTION_BITS = D.SECTION_SIZE_BITS_X86_64
PAGES_PER_SECTION = 1 << (SECTION_BITS - 12)
SPAGE = D.STRUCT_PAGE_SIZE
SECTION_MEMMAP = PAGES_PER_SECTION * SPAGE            # 2 MiB of struct page per section
SECTIONS_PER_ROOT = PAGE // D.MEM_SECTION_SIZE         # include/linux/mmzone.h SECTIONS_PER_ROOT
NR_SECTION_ROOTS = (1 << (D.MAX_PHYSMEM_BITS_X86_64 - SECTION_BITS)) // SECTIONS_PER_ROOT
MAX_NUMNODES = 1024                                    # Debian CONFIG_NODES_SHIFT=10

# Offsets from _stext of the static symbols (our image layout).
SWAPPER_PG_DIR = 0x1C0_0000
BRK = (0x1C0_1000, 0x1D0_0000)
INIT_UTS_NS = 0x1D0_0000
DATA = 0x1D0_1000
NODE_DATA = 0x1D0_2000
PRINTK_RB_STATIC = 0x1D0_4000
PRB_DESCS = 0x1D1_0000
PRB_INFOS = 0x1D2_8000
LOG_BUF = 0x1D8_0000
# Small variables in the DATA page: offset within it.
VAR = {"prb": 0x0, "log_buf": 0x8, "log_buf_len": 0x10, "log_first_idx": 0x14, "log_next_idx": 0x18,
       "clear_idx": 0x1C, "clear_seq": 0x20, "vmap_area_list": 0x40, "node_online_map": 0x80}

# Page table entry bits (arch/x86/include/asm/pgtable_types.h).
_KERNPG_TABLE = 0x63                         # PRESENT | RW | ACCESSED | DIRTY
_PAGE_KERNEL_LARGE_EXEC = 0x1E3              # ... | PSE | GLOBAL
_PAGE_NX = 1 << 63
PAGE_OFFSET_MASK = (1 << 48) - 1

# struct page (include/linux/mm_types.h, both 4.18 and 6.1: the VMCOREINFO offsets).
PAGE_BUDDY_MAPCOUNT_VALUE = -129             # ~PG_buddy (include/linux/page-flags.h, 4.18+)
PG = {   # include/linux/page-flags.h enum pageflags (x86_64: PG_uncached present)
    "6.1": {"referenced": 1, "uptodate": 2, "lru": 4, "active": 5, "slab": 9, "swapcache": 10,
            "reserved": 12, "private": 13, "head": 16, "swapbacked": 19, "hwpoison": 23},
    "4.18": {"referenced": 2, "uptodate": 3, "lru": 5, "active": 6, "slab": 8, "swapcache": 9,
             "reserved": 11, "private": 12, "head": 15, "swapbacked": 18, "hwpoison": 22},
}
PG["6.6"] = PG["6.1"]    # 6.6's structures are simulated as 6.1's (assumption, docs/SOURCES.md §12)

# Page classes: what the first kernel uses each page for.
FREE, CACHE, CACHE_PRIVATE, USER, ZERO, KERNEL, RESERVED = range(7)
CLASS_NAMES = ("free", "cache", "cache_private", "user", "zero", "kernel", "reserved")
_M64 = (1 << 64) - 1


def _pgd_index(v: int) -> int:
    return (v >> 39) & 511


def _pud_index(v: int) -> int:
    return (v >> 30) & 511


def _pmd_index(v: int) -> int:
    return (v >> 21) & 511


def _mix_scalar(x: int) -> int:
    """splitmix64 finaliser (the vectorised `_mix` must agree)."""
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & _M64
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB & _M64
    return x ^ (x >> 31)


def _mix(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


_CLASS_TABLES: dict[tuple[int, ...], tuple[int, np.ndarray]] = {}
HASH_STEP = PAGES_PER_SECTION                # pfns hashed per step: two 256 KiB buffers, reused
_IOTA = np.arange(HASH_STEP, dtype=np.uint64)
_IOTA.flags.writeable = False
_SHIFT_MUL = ((np.uint64(30), np.uint64(0xBF58476D1CE4E5B9)), (np.uint64(27), np.uint64(0x94D049BB133111EB)))
_S31 = np.uint64(31)


def _class_table(cum: tuple[int, ...]) -> tuple[int, np.ndarray]:
    """(g, table): the class of u < 10**6 (searchsorted(cum[:-1], u, side="right"))
    is table[u // g], g the gcd of the thresholds and 10**6: the class is
    constant on each run of g values."""
    if cum not in _CLASS_TABLES:
        g = math.gcd(*cum)                                 # cum[-1] is 10**6
        widths = np.diff(np.array((0,) + cum)) // g
        _CLASS_TABLES[cum] = (g, np.repeat(np.arange(len(cum), dtype=np.uint8), widths))
    return _CLASS_TABLES[cum]


class FirstKernel:
    """Where the first kernel's structures sit, and their content."""

    def __init__(self, m: Machine):
        self.m = m
        self.log = None                                      # printk.LogBuffer, written at boot
        self.version = m.cfg.kernel.version or D.KERNEL_VERSION_MODERN
        self.prb = self.version != "4.18"                    # lockless ring buffer from 5.10 on
        self.osrelease = D.OSRELEASE_BY_VERSION[self.version]
        self.pg = PG[self.version]
        self.image = m.kernel_image[0]
        self.phys_base = 0
        self.page_offset = m.page_offset
        self.salt = int.from_bytes(hashlib.sha256(f"{m.seed}\x1fpage-use".encode()).digest()[:8], "little")
        cum, total = [], 0.0
        for name in ("free", "cache", "cache_private", "user", "zero", "kernel"):
            total += D.PAGE_USE[name]
            cum.append(int(round(total * 1_000_000)))
        cum[-1] = 1_000_000
        self.thresholds = np.array(cum[:-1], dtype=np.uint64)
        self._thresholds = cum[:-1]
        g, self._class_of_ug = _class_table(tuple(cum))
        self._use_div, self._use_mod = np.uint64(g), np.uint64(1_000_000 // g)
        self._salt64 = np.uint64(self.salt)
        self._hash_bufs: tuple[np.ndarray, np.ndarray] | None = None
        self.uptime = parse_duration(D.UPTIME_AT_PANIC)

        # --- SPARSEMEM: every 128 MiB section holding RAM has a mem_map.
        # Kept as runs of consecutive sections (first, count, index of first): a 1 TiB
        # machine has 8192 sections, and memory must not grow with RAM.
        runs: list[list[int]] = []
        for a, b in m.ram_ranges:
            lo, hi = a >> SECTION_BITS, ((b - 1) >> SECTION_BITS) + 1
            if runs and lo < runs[-1][0] + runs[-1][1]:
                lo = runs[-1][0] + runs[-1][1]
            if lo >= hi:
                continue
            if runs and lo == runs[-1][0] + runs[-1][1]:
                runs[-1][1] += hi - lo
            else:
                runs.append([lo, hi - lo, (runs[-1][2] + runs[-1][1]) if runs else 0])
        self.section_runs = [tuple(r) for r in runs]
        self._run_firsts = [r[0] for r in self.section_runs]
        self.nsections = sum(r[1] for r in self.section_runs)
        size = self.nsections * SECTION_MEMMAP
        free = m.first_kernel_free
        self.memmap = free.alloc(size, SECTION_MEMMAP, top_down=True)   # memblock allocates top-down
        if self.memmap is None:
            raise LayoutError("memory.iomem", f"no room for the struct page array ({size >> 20} MiB, 2 MiB "
                              "aligned) in free System RAM")
        self.nodes = m.cfg.memory.numa_nodes
        self.pgdat_size = -(-174208 // PAGE) * PAGE               # SIZE(pglist_data), 6.1 sample
        self.pgdat = free.alloc(self.pgdat_size * self.nodes, PAGE, top_down=True)
        if self.pgdat is None:
            raise LayoutError("memory.iomem", "no room for the pglist_data of each node in free System RAM")
        # Snapshot: every page outside these ranges is reserved (memblock) in struct page.
        self.free_ranges = list(free.ranges)
        self._free_starts = np.array([s for s, _ in self.free_ranges], dtype=np.uint64)
        self._free_ends = np.array([e for _, e in self.free_ranges], dtype=np.uint64)
        self._fs = [s for s, _ in self.free_ranges]
        self._taken_n = -1
        self._taken: tuple[np.ndarray, np.ndarray] = (np.zeros(0, np.uint64), np.zeros(0, np.uint64))
        self._zero_cache: tuple[tuple[int, int] | None, np.ndarray | None] = (None, None)
        self._struct_page_tables()

        # --- early allocations from the image's brk area
        self._brk = BRK[0]
        self.pages: dict[int, bytearray] | None = {}   # physical page -> content, until written at boot
        self.pgd = self.image + SWAPPER_PG_DIR
        self.pages[self.pgd] = bytearray(PAGE)
        self.pt_pages: list[int] = [self.pgd]
        self._build_page_tables()
        self._build_mem_section()

    # ------------------------------------------------------------ addresses
    def text(self, off: int) -> int:
        """Kernel-text virtual address of _stext + off."""
        return D.START_KERNEL_MAP + self.phys_base + self.image + off

    def text_paddr(self, off: int) -> int:
        return self.image + off

    def dmap(self, paddr: int) -> int:
        return self.page_offset + paddr

    def vmemmap(self, pfn: int) -> int:
        return D.VMEMMAP_START_X86_64 + pfn * SPAGE

    def memmap_paddr(self, pfn: int) -> int | None:
        """Physical address of pfn's struct page (None: its section has no mem_map)."""
        i = self.section_index(pfn // PAGES_PER_SECTION)
        return None if i is None else self.memmap + i * SECTION_MEMMAP + (pfn % PAGES_PER_SECTION) * SPAGE

    def section_index(self, section: int) -> int | None:
        """Index of a present section's 2 MiB in the struct page block (None: absent)."""
        j = bisect.bisect_right(self._run_firsts, section) - 1
        if j < 0:
            return None
        first, count, index = self.section_runs[j]
        return index + section - first if section < first + count else None

    def iter_sections(self):
        for first, count, index in self.section_runs:
            for i in range(count):
                yield first + i, index + i

    def sections_array(self) -> np.ndarray:
        return np.concatenate([np.arange(f, f + n, dtype=np.uint64) for f, n, _ in self.section_runs])

    def symbol(self, name: str) -> int:
        """Virtual address of a static symbol (SYMBOL(name) in VMCOREINFO)."""
        offs = {"swapper_pg_dir": SWAPPER_PG_DIR, "init_top_pgt": SWAPPER_PG_DIR, "init_uts_ns": INIT_UTS_NS,
                "_stext": 0, "node_data": NODE_DATA, "printk_rb_static": PRINTK_RB_STATIC,
                "__log_buf": LOG_BUF, "_printk_rb_static_descs": PRB_DESCS,
                "_printk_rb_static_infos": PRB_INFOS}
        if name in offs:
            return self.text(offs[name])
        return self.text(DATA + VAR[name])

    def vtop(self, vaddr: int) -> int | None:
        """Walk our own page tables (as the tools must): physical address or None."""
        entry = self._pte(self.pgd, _pgd_index(vaddr))
        if not entry & 1:
            return None
        pud = self._pte(entry & 0x000F_FFFF_FFFF_F000, _pud_index(vaddr))
        if not pud & 1:
            return None
        if pud & 0x80:
            return (pud & 0x000F_FFFF_C000_0000) + (vaddr & (GiB - 1))
        pmd = self._pte(pud & 0x000F_FFFF_FFFF_F000, _pmd_index(vaddr))
        if not pmd & 1:
            return None
        if pmd & 0x80:
            return (pmd & 0x000F_FFFF_FFE0_0000) + (vaddr & (2 * MiB - 1))
        return None

    def _pte(self, table: int, index: int) -> int:
        if self.pages is None:           # written at boot: read RAM as it was at the panic
            return struct.unpack("<Q", self.m.memory.read(table + index * 8, 8, 0))[0]
        page = self.pages.get(table)
        return 0 if page is None else struct.unpack_from("<Q", page, index * 8)[0]

    # ------------------------------------------------------------ boot-time pages
    def _alloc(self) -> int:
        """One zeroed early page (brk area first, then memblock top-down)."""
        if self._brk < BRK[1]:
            paddr, self._brk = self.image + self._brk, self._brk + PAGE
        else:
            paddr = self.m.first_kernel_free.alloc(PAGE, PAGE, top_down=True)
            if paddr is None:
                raise LayoutError("memory.iomem", "no room for the page tables in free System RAM")
            self.free_ranges = list(self.m.first_kernel_free.ranges)
            self._free_starts = np.array([s for s, _ in self.free_ranges], dtype=np.uint64)
            self._free_ends = np.array([e for _, e in self.free_ranges], dtype=np.uint64)
            self._fs = [s for s, _ in self.free_ranges]
        self.pages[paddr] = bytearray(PAGE)
        return paddr

    def _table(self, parent: int, index: int) -> int:
        """The next-level table under parent[index], made when missing."""
        entry = self._pte(parent, index)
        if entry & 1:
            return entry & 0x000F_FFFF_FFFF_F000
        child = self._alloc()
        self.pt_pages.append(child)
        struct.pack_into("<Q", self.pages[parent], index * 8, child | _KERNPG_TABLE)
        return child

    def _set(self, table: int, index: int, value: int) -> None:
        struct.pack_into("<Q", self.pages[table], index * 8, value)

    def _build_page_tables(self) -> None:
        m = self.m
        # Direct map: 1 GiB pages over each GiB holding RAM (arch/x86/mm/init_64.c phys_pud_init).
        gbs = sorted({g for a, b in m.ram_ranges for g in range(a >> 30, ((b - 1) >> 30) + 1)})
        for g in gbs:
            v = self.page_offset + (g << 30)
            pud = self._table(self.pgd, _pgd_index(v))
            self._set(pud, _pud_index(v), (g << 30) | _PAGE_KERNEL_LARGE_EXEC | _PAGE_NX)
        # Kernel text: level3_kernel_pgt[510] -> level2_kernel_pgt, 2 MiB pages over the image.
        start, end = m.kernel_image
        for p in range(start & ~(2 * MiB - 1), end, 2 * MiB):
            v = D.START_KERNEL_MAP + p - self.phys_base
            pud = self._table(self.pgd, _pgd_index(v))
            pmd = self._table(pud, _pud_index(v))
            self._set(pmd, _pmd_index(v), (p + self.phys_base) | _PAGE_KERNEL_LARGE_EXEC)
        # vmemmap: one 2 MiB page of struct page per present section.
        for s, i in self.iter_sections():
            v = self.vmemmap(s * PAGES_PER_SECTION)
            pud = self._table(self.pgd, _pgd_index(v))
            pmd = self._table(pud, _pud_index(v))
            self._set(pmd, _pmd_index(v), (self.memmap + i * SECTION_MEMMAP) | _PAGE_KERNEL_LARGE_EXEC | _PAGE_NX)

    def _build_mem_section(self) -> None:
        """SPARSEMEM_EXTREME (mm/sparse.c): mem_section points at NR_SECTION_ROOTS
        root pointers, each to a page of SECTIONS_PER_ROOT struct mem_section
        {section_mem_map, usage, page_ext, pad}. section_mem_map encodes
        mem_map - section_nr_to_pfn(nr) (sparse_encode_mem_map) with
        SECTION_MARKED_PRESENT | HAS_MEM_MAP | IS_ONLINE | IS_EARLY."""
        nroot_pages = -(-NR_SECTION_ROOTS * 8 // PAGE)
        first = self._alloc()
        roots = [first] + [self._alloc() for _ in range(nroot_pages - 1)]
        assert all(b - a == PAGE for a, b in zip(roots, roots[1:])), "root array must be contiguous"
        self.mem_section_roots = first
        self.mem_section_pages: list[int] = list(roots)
        root_pages: dict[int, int] = {}
        for s, _ in self.iter_sections():
            r = s // SECTIONS_PER_ROOT
            if r not in root_pages:
                root_pages[r] = page = self._alloc()
                self.mem_section_pages.append(page)
                paddr = first + r * 8
                struct.pack_into("<Q", self.pages[paddr & ~(PAGE - 1)], paddr % PAGE, self.dmap(page))
            coded = (D.VMEMMAP_START_X86_64 | 0xF) & _M64      # vmemmap + pfn is every section's mem_map
            usage = self.dmap(self.pgdat)                      # some kernel pointer (struct mem_section_usage)
            struct.pack_into("<QQQQ", self.pages[root_pages[r]], (s % SECTIONS_PER_ROOT) * D.MEM_SECTION_SIZE,
                             coded, usage, 0, 0)

    # ------------------------------------------------------------ page use
    def _taken_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        taken = getattr(self.m, "taken", None)
        if taken is None:
            return self._taken
        if len(taken.starts) != self._taken_n:
            self._taken_n = len(taken.starts)
            self._taken = (np.array(taken.starts, dtype=np.uint64), np.array(taken.ends, dtype=np.uint64))
        return self._taken

    def page_classes(self, pfns: np.ndarray) -> np.ndarray:
        """What each page is used for (FREE..RESERVED), vectorised."""
        pfns = pfns.astype(np.uint64, copy=False)
        cls = self._use_classes(pfns)
        addr = pfns << np.uint64(12)
        i = np.searchsorted(self._free_starts, addr, side="right").astype(np.int64) - 1
        ok = i >= 0
        ends = self._free_ends[np.maximum(i, 0)] if len(self._free_ends) else np.zeros_like(addr)
        in_free = ok & (addr + np.uint64(PAGE) <= ends)
        ts, te = self._taken_arrays()
        if len(ts):
            j = np.searchsorted(ts, addr + np.uint64(PAGE), side="left").astype(np.int64) - 1
            hit = (j >= 0) & (te[np.maximum(j, 0)] > addr)
            cls[hit] = KERNEL
        cls[~in_free] = RESERVED
        return cls

    def _use_classes(self, pfns: np.ndarray) -> np.ndarray:
        """The hashed use of each page (FREE..KERNEL) of uint64 pfns, before
        memblock and allocations: searchsorted(thresholds, mix % 10**6)."""
        out = np.empty(len(pfns), dtype=np.uint8)
        x, t = self._buffers()
        for lo in range(0, len(pfns), HASH_STEP):
            n = min(HASH_STEP, len(pfns) - lo)
            np.bitwise_xor(pfns[lo:lo + n], self._salt64, out=x[:n])
            self._use_step(x[:n], t[:n], out[lo:lo + n])
        return out

    def _use_classes_range(self, lo: int, hi: int) -> np.ndarray:
        """_use_classes(arange(lo, hi)) without the arange."""
        out = np.empty(hi - lo, dtype=np.uint8)
        x, t = self._buffers()
        for a in range(lo, hi, HASH_STEP):
            n = min(HASH_STEP, hi - a)
            if a % HASH_STEP == 0:                 # (a + i) ^ salt == i ^ (a ^ salt): a has no bit of i < HASH_STEP
                np.bitwise_xor(_IOTA[:n], np.uint64(a ^ self.salt), out=x[:n])
            else:
                np.add(_IOTA[:n], np.uint64(a), out=x[:n])
                x[:n] ^= self._salt64
            self._use_step(x[:n], t[:n], out[a - lo:a - lo + n])
        return out

    def _buffers(self) -> tuple[np.ndarray, np.ndarray]:
        if self._hash_bufs is None:
            self._hash_bufs = (np.empty(HASH_STEP, dtype=np.uint64), np.empty(HASH_STEP, dtype=np.uint64))
        return self._hash_bufs

    def _use_step(self, x: np.ndarray, t: np.ndarray, out: np.ndarray) -> None:
        """out = class of x (pfn ^ salt), in place in x and t (page faults of
        fresh big temporaries cost more than the arithmetic). Exact cheaper
        forms of the table lookup at mix % 10**6: (y % 10**6) // g equals
        (y // g) % (10**6 // g) as g divides 10**6, and y % d equals
        y - (y // d) * d (numpy divides by a scalar with a multiply)."""
        for shift, mul in _SHIFT_MUL:                         # _mix, in place
            np.right_shift(x, shift, out=t)
            x ^= t
            x *= mul
        np.right_shift(x, _S31, out=t)
        x ^= t
        x //= self._use_div
        np.floor_divide(x, self._use_mod, out=t)
        t *= self._use_mod
        x -= t
        np.take(self._class_of_ug, x.view(np.int64), out=out)

    def page_classes_range(self, lo: int, hi: int) -> np.ndarray:
        """page_classes(arange(lo, hi)), the allocations and then memblock's
        reserved pages (outside every free range) painted as pfn runs (they
        are sorted and disjoint, so a page overlapping one is what
        page_classes' searchsorted finds)."""
        cls = self._use_classes_range(lo, hi)
        taken = getattr(self.m, "taken", None)
        if taken is not None:
            starts, ends = taken.starts, taken.ends
            for j in range(max(0, bisect.bisect_right(starts, lo << 12) - 1), len(starts)):
                if starts[j] >= hi << 12:
                    break
                a, b = max(lo, starts[j] // PAGE), min(hi, -(-ends[j] // PAGE))   # pages overlapping
                if a < b:
                    cls[a - lo:b - lo] = KERNEL
        pos = lo                                              # pfns before pos: painted or free
        fr = self.free_ranges
        for i in range(max(0, bisect.bisect_right(self._fs, lo << 12) - 1), len(fr)):
            s, e = fr[i]
            if s >= hi << 12:
                break
            a, b = max(lo, -(-s // PAGE)), min(hi, e // PAGE)     # pages wholly inside
            if a < b:
                if a > pos:
                    cls[pos - lo:a - lo] = RESERVED
                pos = max(pos, b)
        if pos < hi:
            cls[pos - lo:] = RESERVED
        return cls

    def ranges_disjoint(self) -> bool:
        """page_classes_range's condition: free ranges and allocations sorted,
        non-empty and disjoint."""
        taken = getattr(self.m, "taken", None)
        for starts, ends in ((self._fs, [e for _, e in self.free_ranges]),
                             (taken.starts, taken.ends) if taken is not None else ([], [])):
            if any(e <= s for s, e in zip(starts, ends)) or any(e > s for e, s in zip(ends, starts[1:])):
                return False
        return True

    def page_class(self, pfn: int) -> int:
        """Scalar page_classes (the single-page path)."""
        u = _mix_scalar((pfn ^ self.salt) & _M64) % 1_000_000
        cls = bisect.bisect_right(self._thresholds, u)
        addr = pfn << 12
        i = bisect.bisect_right(self._fs, addr) - 1
        if i < 0 or addr + PAGE > self.free_ranges[i][1]:
            return RESERVED
        taken = getattr(self.m, "taken", None)
        if taken is not None:
            j = bisect.bisect_left(taken.starts, addr + PAGE) - 1
            if j >= 0 and taken.ends[j] > addr:
                return KERNEL
        return cls

    def struct_pages(self, pfns: np.ndarray) -> np.ndarray:
        """struct page of each pfn, as (n, 8) u64 words: flags, lru.next
        (compound_head), lru.prev, mapping, index, private, _mapcount |
        _refcount << 32, memcg_data.

        free: a buddy page of order 0 (_mapcount PAGE_BUDDY_MAPCOUNT_VALUE,
        private = order, on a free list); cache: on the LRU with a file
        mapping (cache_private: also PG_private, buffer heads in private);
        user: on the LRU, anonymous (mapping | PAGE_MAPPING_ANON), mapped once;
        kernel: a slab page; zero: a kernel allocation holding zeros;
        reserved: PG_reserved (memblock: the image, the reservation, ...)."""
        pfns = pfns.astype(np.uint64, copy=False)
        cls = self.page_classes(pfns)
        w = self._template[cls]                                     # per-class constant words
        h = _mix(pfns ^ np.uint64(self.salt ^ 0x5A5A))
        lru = self._on_list[cls]
        self_lru = np.uint64(D.VMEMMAP_START_X86_64 + 8) + pfns * np.uint64(SPAGE)
        self_lru *= lru                                             # 0 off the lists
        w[:, 1] = self_lru
        w[:, 2] = self_lru
        # mapping: an address_space / anon_vma in the direct map, 64-byte aligned, in the kernel's slab.
        obj = np.uint64(self.page_offset + self.pgdat) + ((h >> np.uint64(40)) << np.uint64(6))
        w[:, 3] = (obj | self._anon[cls]) * self._has_mapping[cls]
        w[:, 4] = h & self._index_mask[cls]
        w[:, 5] = (obj + np.uint64(0x40)) * (cls == CACHE_PRIVATE)
        return w

    def _struct_page_tables(self) -> None:
        """Per-class constants for struct_pages."""
        pg = self.pg
        unmapped = 0xFFFF_FFFF | (1 << 32)          # _mapcount -1, _refcount 1
        lru_file = (1 << pg["lru"]) | (1 << pg["uptodate"]) | (1 << pg["referenced"])
        t = np.zeros((7, 8), dtype=np.uint64)
        t[FREE, 6] = PAGE_BUDDY_MAPCOUNT_VALUE & 0xFFFF_FFFF      # _refcount 0
        t[CACHE, 0], t[CACHE, 6] = lru_file, unmapped
        t[CACHE_PRIVATE, 0], t[CACHE_PRIVATE, 6] = lru_file | (1 << pg["private"]), unmapped
        t[USER, 0] = (1 << pg["lru"]) | (1 << pg["uptodate"]) | (1 << pg["active"]) | (1 << pg["swapbacked"])
        t[USER, 6] = 0 | (1 << 32)                                 # _mapcount 0: mapped once
        t[ZERO, 6] = unmapped
        t[KERNEL, 0], t[KERNEL, 6] = 1 << pg["slab"], unmapped
        t[RESERVED, 0], t[RESERVED, 6] = 1 << pg["reserved"], unmapped
        self._template = t
        self._on_list = np.array([1, 1, 1, 1, 0, 0, 0], dtype=np.uint64)
        self._has_mapping = np.array([0, 1, 1, 1, 0, 1, 0], dtype=np.uint64)
        self._anon = np.array([0, 0, 0, 1, 0, 0, 0], dtype=np.uint64)
        self._index_mask = np.array([0, 0xFFFFF, 0xFFFFF, 0xFFFFFFF, 0, 0, 0], dtype=np.uint64)

    def zero_mask(self, first_pfn: int, n: int) -> np.ndarray:
        """page_classes(first_pfn .. first_pfn+n) == ZERO, computed per 64 MiB
        and cached (the vmcore writer asks block after block)."""
        span = 1 << 14
        out = np.empty(n, dtype=bool)
        pos = first_pfn
        while pos < first_pfn + n:
            base = pos - pos % span
            taken = getattr(self.m, "taken", None)
            key = (base, len(taken.starts) if taken is not None else 0)
            if self._zero_cache[0] != key:
                self._zero_cache = (key, self.page_classes(np.arange(base, base + span, dtype=np.uint64)) == ZERO)
            take = min(base + span, first_pfn + n) - pos
            out[pos - first_pfn:pos - first_pfn + take] = self._zero_cache[1][pos - base:pos - base + take]
            pos += take
        return out

    # ------------------------------------------------------------ overlays
    def install(self, mem: PhysicalMemory) -> None:
        mem.add_overlay(MemMapOverlay(self))
        mem.add_overlay(ZeroPageOverlay(self, mem.ram[0][0], mem.ram[-1][1]))

    def regions(self) -> list[tuple[int, int, str]]:
        """Kernel structures for DMA-hit metrics (CrashRun.region_of)."""
        out = _page_runs(self.pt_pages, "page_tables") + _page_runs(self.mem_section_pages, "mem_section")
        out.append((self.memmap, self.memmap + self.nsections * SECTION_MEMMAP, "mem_map"))
        out.append((self.pgdat, self.pgdat + self.pgdat_size * self.nodes, "pglist_data"))
        out.append((self.text_paddr(INIT_UTS_NS), self.text_paddr(INIT_UTS_NS) + PAGE, "init_uts_ns"))
        out.append((self.text_paddr(DATA), self.text_paddr(DATA) + PAGE, "kernel_data"))
        out.append((self.text_paddr(NODE_DATA), self.text_paddr(NODE_DATA) + 2 * PAGE, "node_data"))
        if self.prb:
            rb = self.text_paddr(PRINTK_RB_STATIC)
            out.append((rb, rb + PAGE, "printk_ringbuffer"))
            out.append((self.text_paddr(PRB_DESCS), self.text_paddr(PRB_INFOS), "printk_descs"))
            out.append((self.text_paddr(PRB_INFOS), self.text_paddr(LOG_BUF), "printk_infos"))
        out.append((self.text_paddr(LOG_BUF), self.text_paddr(LOG_BUF) + (1 << D.LOG_BUF_SHIFT), "log_buf"))
        return out

    # ------------------------------------------------------------ boot
    def write_boot(self, time: int) -> None:
        """Everything the running kernel set up before the panic."""
        m, mem = self.m, self.m.memory
        for paddr in sorted(self.pages):
            mem.write(paddr, bytes(self.pages[paddr]), time, "kernel")
        self.pages = None                # RAM holds them now (memory must not hold them twice)
        data = bytearray(PAGE)
        if self.prb:
            struct.pack_into("<Q", data, VAR["prb"], self.text(PRINTK_RB_STATIC))
        else:
            struct.pack_into("<QI", data, VAR["log_buf"], self.text(LOG_BUF), 1 << D.LOG_BUF_SHIFT)
        lst = self.text(DATA + VAR["vmap_area_list"])
        struct.pack_into("<QQ", data, VAR["vmap_area_list"], lst, lst)   # empty list_head
        mask = sum(1 << n for n in range(self.nodes))
        struct.pack_into("<Q", data, VAR["node_online_map"], mask)
        mem.write(self.text_paddr(DATA), bytes(data), time, "kernel")
        node_data = bytearray(2 * PAGE)
        starts = [0] + list(m._node_starts[1:]) if m._node_starts else [0]
        ends = starts[1:] + [m.ram_ranges[-1][1]]
        for n in range(self.nodes):
            pgdat = self.pgdat + n * self.pgdat_size
            struct.pack_into("<Q", node_data, n * 8, self.dmap(pgdat))
            s, e = (starts[n], ends[n]) if n < len(starts) else (0, 0)
            rec = bytearray(40)
            # OFFSET(pglist_data.nr_zones)=171552, node_start_pfn=171560, node_spanned_pages=171576, node_id=171584
            struct.pack_into("<I", rec, 0, 4)
            struct.pack_into("<QQQQ", rec, 8, s >> 12, (e - s) >> 12, (e - s) >> 12, n)
            mem.write(pgdat + 171552, bytes(rec), time, "kernel")
        mem.write(self.text_paddr(NODE_DATA), bytes(node_data), time, "kernel")


def _page_runs(pages: list[int], name: str) -> list[tuple[int, int, str]]:
    """Sorted pages merged into [start, end) runs."""
    out: list[tuple[int, int, str]] = []
    for p in sorted(pages):
        if out and out[-1][1] == p:
            out[-1] = (out[-1][0], p + PAGE, name)
        else:
            out.append((p, p + PAGE, name))
    return out


class MemMapOverlay:
    """The struct page array as computed content."""

    def __init__(self, k: FirstKernel):
        self.k = k
        self.start = k.memmap
        self.end = k.memmap + k.nsections * SECTION_MEMMAP
        self.sections = k.sections_array()

    def fill(self, addr: int, words: np.ndarray) -> None:
        """Overwrite `words` (u64, at `addr`, 8-aligned) where they overlap the array."""
        lo, hi = max(addr, self.start), min(addr + 8 * len(words), self.end)
        if lo >= hi:
            return
        first, last = (lo - self.start) // SPAGE, (hi - self.start + SPAGE - 1) // SPAGE
        idx = np.arange(first, last, dtype=np.uint64)
        pfns = self.sections[idx // np.uint64(PAGES_PER_SECTION)] * np.uint64(PAGES_PER_SECTION) \
            + idx % np.uint64(PAGES_PER_SECTION)
        flat = self.k.struct_pages(pfns).reshape(-1)
        skip = (lo - self.start - first * SPAGE) // 8
        words[(lo - addr) // 8:(hi - addr) // 8] = flat[skip:skip + (hi - lo) // 8]


class ZeroPageOverlay:
    """Pages the first kernel holds zeros in (class ZERO) read as zero."""

    def __init__(self, k: FirstKernel, start: int, end: int):
        self.k, self.start, self.end = k, start, end

    def fill_pages(self, pfns: np.ndarray, words: np.ndarray, rows: np.ndarray) -> None:
        """fill() of whole pages at once: row rows[i] of `words` is page pfns[i]
        (page_classes is page_class vectorised)."""
        words[rows[self.k.page_classes(pfns) == ZERO]] = 0

    def fill(self, addr: int, words: np.ndarray) -> None:
        size = 8 * len(words)
        if size == PAGE and addr % PAGE == 0:
            if self.k.page_class(addr >> 12) == ZERO:
                words[:] = 0
            return
        first, last = addr >> 12, (addr + size - 1) >> 12
        zero = np.nonzero(self.k.zero_mask(first, last - first + 1))[0]
        if not len(zero):
            return
        if addr % PAGE == 0 and size % PAGE == 0:
            words.reshape(-1, PAGE // 8)[zero] = 0
            return
        for z in zero:
            p = (first + int(z)) << 12
            lo, hi = max(p, addr), min(p + PAGE, addr + size)
            words[(lo - addr) // 8:(hi - addr) // 8] = 0
