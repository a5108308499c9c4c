"""Half-open address ranges [start, end): free-space bookkeeping for placing
kexec segments in the reservation and first-kernel structures in RAM."""

from __future__ import annotations

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

    def random_address(self, rng: random.Random, size: int, align: int) -> int | None:
        """A uniformly chosen `align`-aligned address where `size` bytes fit (not removed)."""
        slots = [(align_up(s, align), (e - size) // align * align) for s, e in self.ranges]
        slots = [(a, b) for a, b in slots if b >= a]
        counts = [(b - a) // align + 1 for a, b in slots]
        total = sum(counts)
        if total == 0:
            return None
        k = rng.randrange(total)
        for (a, _), n in zip(slots, counts):
            if k < n:
                return a + k * align
            k -= n
        raise AssertionError("unreachable")
