"""Half-open address ranges [start, end): free-space bookkeeping for placing
kexec segments in the reservation and first-kernel structures in RAM."""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass


def align_up(x: int, a: int) -> int:
    return -(-x // a) * a


def align_down(x: int, a: int) -> int:
    return x // a * a


def overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


@dataclass
class FreeRanges:
    """A sorted set of free [start, end) ranges that allocations carve up."""

    ranges: list[tuple[int, int]]

    def __post_init__(self) -> None:
        self.ranges = sorted((s, e) for s, e in self.ranges if e > s)

    def remove(self, start: int, end: int) -> None:
        out: list[tuple[int, int]] = []
        for s, e in self.ranges:
            if e <= start or s >= end:
                out.append((s, e))
                continue
            if s < start:
                out.append((s, start))
            if end < e:
                out.append((end, e))
        self.ranges = out

    def alloc(self, size: int, align: int, top_down: bool = False,
              lo: int = 0, hi: int = 1 << 64) -> int | None:
        """Place `size` bytes aligned to `align`, like kexec-tools' locate_hole:
        the lowest fitting hole (bottom-up) or the highest (top-down)."""
        order = reversed(self.ranges) if top_down else self.ranges
        for s, e in order:
            s, e = max(s, lo), min(e, hi)
            if top_down:
                start = align_down(e - size, align)
                if start >= s and start + size <= e:
                    self.remove(start, start + size)
                    return start
            else:
                start = align_up(s, align)
                if start + size <= e:
                    self.remove(start, start + size)
                    return start
        return None

    def total(self) -> int:
        return sum(e - s for s, e in self.ranges)


class Taken:
    """Allocated [start, end) ranges, sorted, shared by every RandomPlacer of a machine."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []

    def free(self, start: int, end: int) -> bool:
        i = bisect.bisect_right(self.starts, start)
        if i and self.ends[i - 1] > start:
            return False
        return i == len(self.starts) or self.starts[i] >= end

    def add(self, start: int, end: int) -> None:
        i = bisect.bisect_right(self.starts, start)
        self.starts.insert(i, start)
        self.ends.insert(i, end)

    def add_many(self, ranges: dict[int, int]) -> None:
        """Add {start: end} ranges that overlap nothing taken nor each other:
        one sort instead of an insert each (the lists end up as `add` leaves them)."""
        end_of = dict(zip(self.starts, self.ends))
        if len(ranges) < 8 or len(end_of) < len(self.starts):    # equal starts (zero-size ranges): add's order
            for s, e in ranges.items():
                self.add(s, e)
            return
        end_of.update(ranges)
        self.starts[:] = sorted(end_of)
        self.ends[:] = [end_of[s] for s in self.starts]


class RandomPlacer:
    """Uniformly random, non-overlapping placements in a fixed set of ranges:
    like the page allocator handing out scattered pages. A pick chooses one
    of the aligned start slots where `size` fits (prefix sums + bisect) and
    retries on a collision with what is taken, so thousands of buffers cost
    nothing however fragmented memory gets."""

    def __init__(self, ranges: list[tuple[int, int]], taken: Taken):
        self.ranges = [(s, e) for s, e in sorted(ranges) if e > s]
        self.taken = taken
        self._slots: dict[tuple[int, int], tuple[list[int], list[int], int]] = {}

    def _slot_table(self, size: int, align: int) -> tuple[list[int], list[int], int]:
        """Per range: the running count of slots, and the address of slot k of
        the range being `base + k * align`; then the count of all slots."""
        key = (size, align)
        if key not in self._slots:
            cum, bases, total = [], [], 0
            for s, e in self.ranges:
                first = align_up(s, align)
                bases.append(first - total * align)
                total += max(0, (e - size - first) // align + 1) if e - size >= first else 0
                cum.append(total)
            self._slots[key] = (cum, bases, total)
        return self._slots[key]

    def place(self, rng: random.Random, size: int, align: int, tries: int = 64) -> int | None:
        got = self.place_many(rng, [size], align, tries)
        return got[0] if got else None

    def place_many(self, rng: random.Random, sizes: list[int], align: int, tries: int = 64) -> list[int]:
        """Place `sizes` one after the other: per buffer up to `tries` uniform
        picks, each retried on a collision, then the first fit. Stops at the
        first buffer that finds no room, so a short answer means
        sizes[len(answer)] did not fit (its draws made, as one `place` makes them)."""
        taken = self.taken
        starts, ends = taken.starts, taken.ends
        tables = {s: self._slot_table(s, align) for s in set(sizes)}
        getrandbits, bisect_right = rng.getrandbits, bisect.bisect_right
        # Aligned picks no bigger than `align` overlap only when equal: this call's picks
        # are checked in a dict and merged into `taken` once, instead of an insert each.
        defer = 0 < min(sizes, default=1) and max(sizes, default=0) <= align
        new: dict[int, int] = {}
        out: list[int] = []
        for size in sizes:
            cum, bases, total = tables[size]
            bits = total.bit_length()
            for _ in range(tries if total else 0):
                k = getrandbits(bits)              # rng.randrange(total): random.Random's _randbelow, inline
                while k >= total:
                    k = getrandbits(bits)
                i = bisect_right(cum, k)
                addr = bases[i] + k * align
                end = addr + size
                j = bisect_right(starts, addr)        # Taken.free, inline
                if (j and ends[j - 1] > addr) or (j < len(starts) and starts[j] < end) or addr in new:
                    continue
                if defer:
                    new[addr] = end
                else:
                    starts.insert(j, addr)
                    ends.insert(j, end)
                out.append(addr)
                break
            else:
                if new:                                # the first fit looks at everything taken
                    taken.add_many(new)
                    new.clear()
                fit = self._first_fit(size, align) if total else None    # crowded: look through the gaps
                if fit is None:
                    break
                taken.add(fit, fit + size)
                out.append(fit)
        if new:
            taken.add_many(new)
        return out

    def _first_fit(self, size: int, align: int) -> int | None:
        """The lowest aligned gap between taken runs where `size` fits."""
        starts, ends = self.taken.starts, self.taken.ends
        for s, e in self.ranges:
            pos = align_up(s, align)
            i = max(0, bisect.bisect_right(starts, pos) - 1)
            while pos + size <= e:
                while i < len(starts) and ends[i] <= pos:
                    i += 1
                if i == len(starts) or starts[i] >= pos + size:
                    return pos
                pos = align_up(ends[i], align)
        return None
