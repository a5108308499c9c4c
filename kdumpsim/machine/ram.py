"""Simulated physical memory that remembers who wrote which bytes, and when.

Memory is not stored: a page nobody wrote holds its *base* content, computed on
demand (so a 1 TiB machine costs what a 1 GiB one does). The first kernel's
pages hold a recognisable pattern: every 64-bit word is its own physical
address XOR a per-run key; the crashkernel reservation and holes read as
zero. Every write is kept as a per-page delta (time, offset, bytes, actor),
so any page can be rebuilt as it was at any simulated instant: at the panic
(the truth), when purgatory hashed it, or when the dump copy read it.

Structures too big to store (the first kernel's struct page array, and the
pages it holds zeros in) are *overlays*: computed content laid over the base pattern, a function of the
address generated on demand (`add_overlay`; kdumpsim.firstkernel). An overlay
has `start`, `end` and `fill(addr, words)`, which overwrites the u64 numpy
array `words` holding [addr, addr + 8 * len(words)) (8-aligned) where it
covers it. Overlays are part of the base content: writes land on top.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from kdumpsim.defaults import PAGE_SIZE

PAGE_SHIFT = 12
_WORDS_PER_PAGE = PAGE_SIZE // 8


def pattern_bytes(addr: int, size: int, key: int) -> bytes:
    """First-kernel base content of [addr, addr+size): u64 word at a is a ^ key (LE)."""
    first = addr & ~7
    last = (addr + size + 7) & ~7
    words = np.arange(first, last, 8, dtype=np.uint64)
    words ^= np.uint64(key)
    raw = words.tobytes()
    return raw[addr - first: addr - first + size]


@dataclass(slots=True)
class Delta:
    time: int
    offset: int       # within the page
    data: memoryview  # a zero-copy slice of the write's bytes: src[src_off:src_off+len]
    actor: str
    src: bytes
    src_off: int
    seq: int          # which write (index in the log) this is part of

    @property
    def full(self) -> bool:
        return self.offset == 0 and len(self.data) == PAGE_SIZE


@dataclass(frozen=True, slots=True)
class WriteRecord:
    """One write as it happened (the RAM history the report and metrics use)."""
    time: int
    actor: str
    addr: int
    length: int


class PhysicalMemory:
    """Physical address space: System RAM ranges, zero-filled ranges, and the write history."""

    def __init__(self, ram: list[tuple[int, int]], key: int, zero: Iterable[tuple[int, int]] = ()):
        # ram / zero: half-open [start, end) ranges, sorted.
        self.ram = sorted(ram)
        self._ram_starts = [s for s, _ in self.ram]
        self.zero = sorted(zero)
        self.key = key & 0xFFFF_FFFF_FFFF_FFFF
        self.deltas: dict[int, list[Delta]] = {}
        self.log: list[WriteRecord] = []
        self._touched_sorted: list[int] | None = None
        self.overlays: list = []

    def add_overlay(self, overlay) -> None:
        """Computed base content over [overlay.start, overlay.end) (see the module doc)."""
        self.overlays.append(overlay)
        self.overlays.sort(key=lambda o: o.start)

    def apply_overlays(self, addr: int, words: np.ndarray) -> None:
        """Lay every overlay over `words` (u64 base content at 8-aligned `addr`)."""
        end = addr + 8 * len(words)
        for o in self.overlays:
            if o.start < end and addr < o.end:
                o.fill(addr, words)

    # ------------------------------------------------------------ layout
    def is_ram(self, addr: int, size: int = 1) -> bool:
        i = bisect.bisect_right(self._ram_starts, addr) - 1
        return i >= 0 and addr + size <= self.ram[i][1]

    def _is_zero_page(self, pfn: int) -> bool:
        addr = pfn << PAGE_SHIFT
        if not self.is_ram(addr, PAGE_SIZE):
            return True
        return any(s <= addr < e for s, e in self.zero)

    def base_page(self, pfn: int) -> bytes:
        if self._is_zero_page(pfn):
            return bytes(PAGE_SIZE)
        addr = pfn << PAGE_SHIFT
        if not self.overlays:
            return pattern_bytes(addr, PAGE_SIZE, self.key)
        words = np.arange(addr, addr + PAGE_SIZE, 8, dtype=np.uint64)
        words ^= np.uint64(self.key)
        self.apply_overlays(addr, words)
        return words.tobytes()

    # ------------------------------------------------------------ writes
    def write(self, addr: int, data: bytes | bytearray | memoryview, time: int, actor: str) -> None:
        """Record `data` landing at `addr` at simulated `time` (ns) from `actor`."""
        data = bytes(data)
        view = memoryview(data)
        seq = len(self.log)
        self.log.append(WriteRecord(time, actor, addr, len(data)))
        pos, end = 0, len(data)
        while pos < end:
            a = addr + pos
            pfn, off = a >> PAGE_SHIFT, a & (PAGE_SIZE - 1)
            n = min(PAGE_SIZE - off, end - pos)
            page_deltas = self.deltas.get(pfn)
            if page_deltas is None:
                self.deltas[pfn] = page_deltas = []
                self._touched_sorted = None
            page_deltas.append(Delta(time, off, view[pos:pos + n], actor, data, pos, seq))
            pos += n

    # ------------------------------------------------------------ reads
    def page(self, pfn: int, time: int | None = None,
             keep: Callable[[Delta], bool] | None = None) -> bytes | memoryview:
        """Page `pfn` as it was at `time` (None: after every write), optionally
        applying only the deltas `keep` accepts. Read-only: may be a view."""
        deltas = self.deltas.get(pfn)
        if not deltas:
            return self.base_page(pfn)
        chosen = [d for d in deltas if (time is None or d.time <= time) and (keep is None or keep(d))]
        if not chosen:
            return self.base_page(pfn)
        if chosen[-1].full:
            return chosen[-1].data
        # Start from the last full-page write, if any: nothing before it shows.
        start = next((i for i in range(len(chosen) - 1, -1, -1) if chosen[i].full), None)
        if start is None:
            buf, start = bytearray(self.base_page(pfn)), 0
        else:
            buf = bytearray(chosen[start].data)
            start += 1
        for d in chosen[start:]:
            buf[d.offset:d.offset + len(d.data)] = d.data
        return bytes(buf)

    def read(self, addr: int, size: int, time: int | None = None) -> bytes:
        """Bytes [addr, addr+size) as they were at `time`."""
        return b"".join(self.iter_read(addr, size, time))

    def _one_write(self, addr: int, size: int, time: int | None) -> memoryview | None:
        """Fast path: [addr, addr+size) is, page for page, one earlier write and
        nothing since (a loaded segment as purgatory hashes it)."""
        if addr & (PAGE_SIZE - 1) or size & (PAGE_SIZE - 1) or not size:
            return None
        first, n = addr >> PAGE_SHIFT, size >> PAGE_SHIFT
        lists = [self.deltas.get(p) for p in range(first, first + n)]
        if None in lists or sum(map(len, lists)) != n:
            return None           # a page nobody wrote, or one written more than once
        d0, d1 = lists[0][0], lists[-1][0]
        # One write is contiguous: if the first and last pages hold consecutive
        # parts of the same write, every page between holds its part too.
        if d0.seq != d1.seq or d1.src_off - d0.src_off != size - PAGE_SIZE \
                or not (d0.full and d1.full) or (time is not None and d0.time > time):
            return None
        return memoryview(d0.src)[d0.src_off:d0.src_off + size]

    def _visible_full(self, pfn: int, time: int | None) -> Delta | None:
        """The full-page write that alone makes up page `pfn` at `time`, if any."""
        for d in reversed(self.deltas.get(pfn, ())):
            if time is None or d.time <= time:
                return d if d.full else None
        return None

    def iter_read(self, addr: int, size: int, time: int | None = None) -> Iterator[bytes | memoryview]:
        """The bytes in pieces; consecutive pages that are one earlier write
        (a loaded kexec segment) come back as a single zero-copy view."""
        whole = self._one_write(addr, size, time)
        if whole is not None:
            yield whole
            return
        end = addr + size
        src, seq, lo, hi = None, -1, 0, 0          # the pending zero-copy run
        while addr < end:
            pfn, off = addr >> PAGE_SHIFT, addr & (PAGE_SIZE - 1)
            n = min(PAGE_SIZE - off, end - addr)
            d = self._visible_full(pfn, time)
            if d is not None and d.seq == seq and d.src_off + off == hi:
                hi += n
            else:
                if src is not None:
                    yield memoryview(src)[lo:hi]
                    src = None
                if d is not None:
                    src, seq, lo, hi = d.src, d.seq, d.src_off + off, d.src_off + off + n
                else:
                    page = self.page(pfn, time)
                    yield page if (off == 0 and n == PAGE_SIZE) else page[off:off + n]
            addr += n
        if src is not None:
            yield memoryview(src)[lo:hi]

    def iter_read_base(self, addr: int, size: int) -> Iterator[bytes]:
        """Like iter_read, but the content before any write."""
        end = addr + size
        while addr < end:
            pfn, off = addr >> PAGE_SHIFT, addr & (PAGE_SIZE - 1)
            n = min(PAGE_SIZE - off, end - addr)
            yield self.base_page(pfn)[off:off + n]
            addr += n

    def touched_pfns(self) -> list[int]:
        """Sorted frame numbers of every page something wrote."""
        if self._touched_sorted is None:
            self._touched_sorted = sorted(self.deltas)
        return self._touched_sorted

    def touched_in(self, start: int, end: int) -> list[int]:
        """Written pages in [start, end) bytes, sorted."""
        pfns = self.touched_pfns()
        lo = bisect.bisect_left(pfns, start >> PAGE_SHIFT)
        hi = bisect.bisect_left(pfns, (end + PAGE_SIZE - 1) >> PAGE_SHIFT)
        return pfns[lo:hi]

    def writes_in(self, start: int, end: int, since: int | None = None,
                  actors: set[str] | None = None) -> list[WriteRecord]:
        """Logged writes overlapping [start, end), optionally after `since` and by `actors`."""
        return [w for w in self.log
                if w.addr < end and w.addr + w.length > start
                and (since is None or w.time > since)
                and (actors is None or w.actor in actors)]
