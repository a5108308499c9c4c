"""Simulated physical memory that remembers who wrote which bytes, and when.

Memory is not stored: a page nobody wrote holds its *base* content, computed on
demand (so a 1 TiB machine costs what a 1 GiB one does). The first kernel's
pages hold a recognisable pattern: every 64-bit word is its own physical
address XOR a per-run key; the crashkernel reservation and holes read as
zero. Every write is kept once (time, address, bytes, actor) and indexed by
the pages it touches, so any page can be rebuilt as it was at any simulated instant: at the panic
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
    """One write's part within one page (built on demand from the log)."""
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


class _DeltaView:
    """`memory.deltas.get(pfn)`: the Delta list of a page, built when asked
    (iterating gives the written pages in pfn order)."""

    def __init__(self, mem: PhysicalMemory):
        self._mem = mem

    def get(self, pfn: int, default=None):
        return self._mem.deltas_of(pfn) if pfn in self else default

    def __contains__(self, pfn: int) -> bool:
        return self._mem._seqs(pfn) is not None

    def __iter__(self) -> Iterator[int]:
        return iter(self._mem.touched_pfns())

    def __len__(self) -> int:
        return len(self._mem.touched_pfns())


class PhysicalMemory:
    """Physical address space: System RAM ranges, zero-filled ranges, and the write history.

    A write is kept once (its record in `log`, its bytes in `_data`); each page
    it touches only notes the write's index (`_pages`). Deltas are built from
    these when a reader asks for them.

    Spans: a write that covers at least SPAN_MIN_PAGES whole pages nobody
    wrote before (a kexec segment loaded at boot) notes its whole pages as one
    span (first_pfn, end_pfn, seq) instead of one list per page, so loading a
    40 MiB kernel costs a few list operations, not ten thousand appends. A
    span's pages are in no `_pages` list; a later write to one gives it its
    list back ([seq, later...]: the same writes in the same order), so every
    reader sees what the per-page index alone would show
    (tests/unit/test_ram_spans.py)."""

    SPAN_MIN_PAGES = 64

    def __init__(self, ram: list[tuple[int, int]], key: int, zero: Iterable[tuple[int, int]] = ()):
        # ram / zero: half-open [start, end) ranges, sorted.
        self.ram = sorted(ram)
        self._ram_starts = [s for s, _ in self.ram]
        self.zero = sorted(zero)
        self.key = key & 0xFFFF_FFFF_FFFF_FFFF
        self._pages: dict[int, list[int]] = {}      # pfn -> indices in `log` of the writes touching it
        self._spans: list[tuple[int, int, int]] = []  # (first_pfn, end_pfn, seq), sorted, no page in _pages
        self._span_starts: list[int] = []
        self._keys_sorted: list[int] | None = None  # sorted(_pages)
        self._data: list[bytes] = []                 # the bytes of log[i]
        self.deltas = _DeltaView(self)
        self.log: list[WriteRecord] = []
        self._touched_sorted: list[int] | None = None
        self._written_cache: dict[tuple, tuple[int, list[int]]] = {}
        self._late: dict[int, tuple[int, set[int]]] = {}
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

    def base_array(self, pfns: list[int]) -> np.ndarray:
        """base_page of each of `pfns` as the rows of one (len(pfns), PAGE_SIZE)
        uint8 array: one numpy pattern, each overlay once (`fill_pages(pfns,
        words, rows)` when it has it, else page by page, in the same order
        base_page applies them)."""
        if not pfns:
            return np.zeros((0, PAGE_SIZE), dtype=np.uint8)
        arr = np.array(pfns, dtype=np.uint64)
        starts = arr << np.uint64(PAGE_SHIFT)
        words = starts[:, None] + np.arange(0, PAGE_SIZE, 8, dtype=np.uint64)
        words ^= np.uint64(self.key)
        for o in self.overlays:
            rows = np.nonzero((starts < np.uint64(o.end)) & (starts + np.uint64(PAGE_SIZE) > np.uint64(o.start)))[0]
            if not len(rows):
                continue
            fill_pages = getattr(o, "fill_pages", None)
            if fill_pages is not None:
                fill_pages(arr[rows], words, rows)
            else:
                for r in rows:
                    o.fill(int(starts[r]), words[r])
        words[np.array(self._zero_pages(starts), dtype=bool)] = 0
        return words.view(np.uint8)

    def _zero_pages(self, starts: np.ndarray) -> list[bool]:
        """_is_zero_page of the pages at `starts` (u64 addresses), vectorised."""
        ram_s = np.array(self._ram_starts, dtype=np.uint64)
        ram_e = np.array([e for _, e in self.ram], dtype=np.uint64)
        i = np.searchsorted(ram_s, starts, side="right").astype(np.int64) - 1
        zero = (i < 0) | (starts + np.uint64(PAGE_SIZE) > ram_e[np.maximum(i, 0)])
        for s, e in self.zero:
            zero |= (starts >= np.uint64(s)) & (starts < np.uint64(e))
        return zero.tolist()

    # ------------------------------------------------------------ writes
    def write(self, addr: int, data: bytes | bytearray | memoryview, time: int, actor: str) -> None:
        """Record `data` landing at `addr` at simulated `time` (ns) from `actor`."""
        data = bytes(data)
        seq = len(self.log)
        self.log.append(WriteRecord(time, actor, addr, len(data)))
        self._data.append(data)
        if not data:
            return
        first, end = addr >> PAGE_SHIFT, ((addr + len(data) - 1) >> PAGE_SHIFT) + 1
        if len(data) >= self.SPAN_MIN_PAGES << PAGE_SHIFT:
            lo, hi = (addr + PAGE_SIZE - 1) >> PAGE_SHIFT, (addr + len(data)) >> PAGE_SHIFT   # its whole pages
            if hi - lo >= self.SPAN_MIN_PAGES and self._untouched(lo, hi):
                i = bisect.bisect_left(self._span_starts, lo)
                self._spans.insert(i, (lo, hi, seq))
                self._span_starts.insert(i, lo)
                self._touched_sorted = None
                self._note(first, lo, seq)
                self._note(hi, end, seq)
                return
        self._note(first, end, seq)

    def _note(self, first: int, end: int, seq: int) -> None:
        """Append write `seq` to the lists of pages [first, end)."""
        starts = self._span_starts
        if starts and first < end:
            i = bisect.bisect_right(starts, end - 1) - 1       # the last span starting before `end`
            if i >= 0 and self._spans[i][1] > first:
                self._unspan(first, end)
        pages = self._pages
        for pfn in range(first, end):
            seqs = pages.get(pfn)
            if seqs is None:
                pages[pfn] = [seq]
                self._touched_sorted = self._keys_sorted = None
            else:
                seqs.append(seq)

    def _spans_in(self, first: int, end: int) -> tuple[int, int]:
        """The index range [i, j) of the spans with a page in [first, end)."""
        i = bisect.bisect_right(self._span_starts, first) - 1
        if i < 0 or self._spans[i][1] <= first:
            i += 1
        return i, bisect.bisect_left(self._span_starts, end, lo=i)

    def _untouched(self, first: int, end: int) -> bool:
        """No write yet to any page of [first, end)."""
        if self._keys_sorted is None and len(self._pages) > end - first:
            written = not self._pages.keys().isdisjoint(range(first, end))   # fewer lookups than keys to sort
        else:
            keys = self._keys()
            k = bisect.bisect_left(keys, first)
            written = k < len(keys) and keys[k] < end
        i, j = self._spans_in(first, end)
        return not written and i == j

    def _unspan(self, first: int, end: int) -> None:
        """Give the span pages in [first, end) their own lists again."""
        i, j = self._spans_in(first, end)
        if i == j:
            return
        rest: list[tuple[int, int, int]] = []
        for a, b, seq in self._spans[i:j]:
            for pfn in range(max(a, first), min(b, end)):
                self._pages[pfn] = [seq]
            rest += [(a, first, seq)] if a < first else []
            rest += [(end, b, seq)] if end < b else []
        self._spans[i:j] = rest
        self._span_starts[i:j] = [a for a, _, _ in rest]
        self._keys_sorted = None

    def _span_at(self, pfn: int) -> tuple[int, int, int] | None:
        i = bisect.bisect_right(self._span_starts, pfn) - 1
        return self._spans[i] if i >= 0 and pfn < self._spans[i][1] else None

    def _seqs(self, pfn: int) -> list[int] | None:
        """Log indices of the writes that touched page `pfn`, in order (None: no write)."""
        seqs = self._pages.get(pfn)
        if seqs is None and self._spans:
            i = bisect.bisect_right(self._span_starts, pfn) - 1
            if i >= 0 and pfn < self._spans[i][1]:
                return [self._spans[i][2]]
        return seqs

    def _delta(self, pfn: int, seq: int) -> Delta:
        w, src = self.log[seq], self._data[seq]
        pstart = pfn << PAGE_SHIFT
        lo, hi = max(w.addr, pstart), min(w.addr + w.length, pstart + PAGE_SIZE)
        off = lo - w.addr
        return Delta(w.time, lo - pstart, memoryview(src)[off:off + hi - lo], w.actor, src, off, seq)

    def deltas_of(self, pfn: int, keep: Callable[[WriteRecord], bool] | None = None) -> list[Delta]:
        """Every write's part in page `pfn` (those `keep` accepts), in write order."""
        log = self.log
        return [self._delta(pfn, s) for s in self._seqs(pfn) or () if keep is None or keep(log[s])]

    def writes_to(self, pfn: int) -> list[WriteRecord]:
        """The writes that touched page `pfn`, in order (cheaper than deltas_of)."""
        log = self.log
        return [log[s] for s in self._seqs(pfn) or ()]

    def written_after(self, addr: int, size: int, time: int) -> bool:
        """Did any write after `time` touch a page of [addr, addr+size)? (The
        pages such writes touched are collected from the log as it grows.)"""
        seen, late = self._late.get(time, (0, set()))
        log = self.log
        for i in range(seen, len(log)):
            w = log[i]
            if w.time > time and w.length:
                late.update(range(w.addr >> PAGE_SHIFT, ((w.addr + w.length - 1) >> PAGE_SHIFT) + 1))
        self._late[time] = (len(log), late)
        return not late.isdisjoint(range(addr >> PAGE_SHIFT, ((addr + size - 1) >> PAGE_SHIFT) + 1))

    def _covers(self, seq: int, pstart: int) -> bool:
        w = self.log[seq]
        return w.addr <= pstart and w.addr + w.length >= pstart + PAGE_SIZE

    # ------------------------------------------------------------ reads
    def compose(self, pfn: int, seqs: list[int], base: Callable[[], bytes] | None = None) -> bytes | memoryview:
        """Page `pfn` made of its base content and the writes `seqs` (log
        indices touching it, in order); `base` may supply the base content."""
        if not seqs:
            return base() if base is not None else self.base_page(pfn)
        pstart = pfn << PAGE_SHIFT
        # Start from the last full-page write, if any: nothing before it shows.
        start = next((i for i in range(len(seqs) - 1, -1, -1) if self._covers(seqs[i], pstart)), None)
        if start == len(seqs) - 1:
            return self._delta(pfn, seqs[-1]).data
        if start is None:
            buf, start = bytearray(base() if base is not None else self.base_page(pfn)), 0
        else:
            buf = bytearray(self._delta(pfn, seqs[start]).data)
            start += 1
        for s in seqs[start:]:
            d = self._delta(pfn, s)
            buf[d.offset:d.offset + len(d.data)] = d.data
        return bytes(buf)

    def seqs_of(self, pfn: int) -> list[int]:
        """Log indices of the writes that touched page `pfn`, in order."""
        return self._seqs(pfn) or []

    def page(self, pfn: int, time: int | None = None,
             keep: Callable[[WriteRecord], bool] | None = None) -> bytes | memoryview:
        """Page `pfn` as it was at `time` (None: after every write), optionally
        applying only the writes `keep` accepts (it sees their WriteRecord:
        time, actor, addr, length). Read-only: may be a view."""
        seqs = self._seqs(pfn)
        if not seqs:
            return self.base_page(pfn)
        log = self.log
        chosen = [s for s in seqs if (time is None or log[s].time <= time) and (keep is None or keep(log[s]))]
        return self.compose(pfn, chosen)

    def read(self, addr: int, size: int, time: int | None = None) -> bytes:
        """Bytes [addr, addr+size) as they were at `time`."""
        return b"".join(self.iter_read(addr, size, time))

    def _one_write(self, addr: int, size: int, time: int | None) -> memoryview | None:
        """Fast path: [addr, addr+size) is, page for page, one earlier write and
        nothing since (a loaded segment as purgatory hashes it)."""
        if addr & (PAGE_SIZE - 1) or size & (PAGE_SIZE - 1) or not size:
            return None
        pfn, end = addr >> PAGE_SHIFT, (addr + size) >> PAGE_SHIFT
        seq, pages = None, self._pages
        while pfn < end:             # each page has exactly one write (a span's pages do)
            seqs = pages.get(pfn)
            if seqs is None:
                span = self._span_at(pfn) if self._spans else None
                if span is None:
                    return None      # a page nobody wrote
                s, pfn = span[2], span[1]
            elif len(seqs) == 1:
                s, pfn = seqs[0], pfn + 1
            else:
                return None          # a page written more than once
            seq = s if seq is None else seq
        # One write is contiguous: if the first page's covers the range, it
        # touched every page, so it is each page's one write.
        assert seq is not None       # size > 0
        w = self.log[seq]
        if w.addr > addr or w.addr + w.length < addr + size or (time is not None and w.time > time):
            return None
        off = addr - w.addr
        return memoryview(self._data[seq])[off:off + size]

    def _visible_full(self, pfn: int, time: int | None) -> int | None:
        """The write (log index) that alone makes up page `pfn` at `time`, if any."""
        pstart, log = pfn << PAGE_SHIFT, self.log
        for s in reversed(self._seqs(pfn) or ()):
            if time is None or log[s].time <= time:
                return s if self._covers(s, pstart) else None
        return None

    def iter_read(self, addr: int, size: int, time: int | None = None) -> Iterator[bytes | memoryview]:
        """The bytes in pieces; consecutive pages that are one earlier write
        (a loaded kexec segment) come back as a single zero-copy view."""
        whole = self._one_write(addr, size, time)
        if whole is not None:
            yield whole
            return
        end = addr + size
        seq, lo, hi = -1, 0, 0          # the pending zero-copy run
        while addr < end:
            pfn, off = addr >> PAGE_SHIFT, addr & (PAGE_SIZE - 1)
            n = min(PAGE_SIZE - off, end - addr)
            s = self._visible_full(pfn, time)
            pos = -1 if s is None else addr - self.log[s].addr       # where the bytes are in write s
            if s is not None and s == seq and pos == hi:
                hi += n
            else:
                if seq >= 0:
                    yield memoryview(self._data[seq])[lo:hi]
                    seq = -1
                if s is not None:
                    seq, lo, hi = s, pos, pos + n
                else:
                    page = self.page(pfn, time)
                    yield page if (off == 0 and n == PAGE_SIZE) else page[off:off + n]
            addr += n
        if seq >= 0:
            yield memoryview(self._data[seq])[lo:hi]

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
            self._touched_sorted = self._touched(0, 1 << 64) if self._spans else self._keys()
        return self._touched_sorted

    def _keys(self) -> list[int]:
        if self._keys_sorted is None:
            self._keys_sorted = sorted(self._pages)
        return self._keys_sorted

    def written_by(self, actors: set[str], after: int, start: int, end: int) -> list[int]:
        """Sorted frame numbers of pages in [start, end) bytes that `actors`
        wrote after time `after` (from the log; remembered until the next write)."""
        key = (frozenset(actors), after)
        cached = self._written_cache.get(key)
        if cached is None or cached[0] != len(self.log):
            pfns: set[int] = set()
            for w in self.log:
                if w.time > after and w.length and w.actor in actors:
                    pfns.update(range(w.addr >> PAGE_SHIFT, ((w.addr + w.length - 1) >> PAGE_SHIFT) + 1))
            cached = self._written_cache[key] = (len(self.log), sorted(pfns))
        pfns_sorted = cached[1]
        lo = bisect.bisect_left(pfns_sorted, start >> PAGE_SHIFT)
        hi = bisect.bisect_left(pfns_sorted, (end + PAGE_SIZE - 1) >> PAGE_SHIFT)
        return pfns_sorted[lo:hi]

    def touched_in(self, start: int, end: int) -> list[int]:
        """Written pages in [start, end) bytes, sorted."""
        return self._touched(start >> PAGE_SHIFT, (end + PAGE_SIZE - 1) >> PAGE_SHIFT)

    def _touched(self, first: int, stop: int) -> list[int]:
        """Written pages in [first, stop) (frame numbers), sorted: the listed ones and the spans'."""
        keys = self._keys()
        out = keys[bisect.bisect_left(keys, first):bisect.bisect_left(keys, stop)]
        i, j = self._spans_in(first, stop) if self._spans else (0, 0)
        if i < j:
            for a, b, _ in self._spans[i:j]:
                out += range(max(a, first), min(b, stop))
            out.sort()
        return out

    def writes_in(self, start: int, end: int, since: int | None = None,
                  actors: set[str] | None = None) -> list[WriteRecord]:
        """Logged writes overlapping [start, end), optionally after `since` and by `actors`."""
        return [w for w in self.log
                if w.addr < end and w.addr + w.length > start
                and (since is None or w.time > since)
                and (actors is None or w.actor in actors)]
