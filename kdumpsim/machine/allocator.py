"""Where a first-kernel driver can get DMA memory: the page allocator's free
RAM, and nothing else (docs/SOURCES.md §11).

The crashkernel reservation, the kernel image (with its static log buffer),
the low 1 MiB, the per-cpu areas holding the crash notes, the early page
tables and the struct page arrays are memblock-reserved at boot and never
reach the page allocator: `Machine.first_kernel_free` already leaves them
out. A CMA crashkernel area holds movable pages only, so a driver's own
(unmovable) buffers are never there either. A driver's DMA mask caps the
address (ZONE_DMA32 below 4 GiB for a 32-bit device); the allocator prefers
the device's NUMA node and falls back to the others.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from kdumpsim.machine.ranges import RandomPlacer

if TYPE_CHECKING:
    from kdumpsim.machine.layout import Machine


class PageAllocator:
    def __init__(self, machine: Machine):
        self.m = machine
        self.free = list(machine.first_kernel_free.ranges)     # the CMA area is already cut out
        self._placers: dict[tuple[int, int, int | None], RandomPlacer] = {}

    def space(self, lo: int = 0, hi: int = 1 << 64, node: int | None = None) -> list[tuple[int, int]]:
        """Free first-kernel RAM in [lo, hi), on `node` if given."""
        out = []
        for s, e in self.free:
            s, e = max(s, lo), min(e, hi)
            if node is not None:
                s, e = self.m.clip_to_node(s, e, node)
            if s < e:
                out.append((s, e))
        return out

    def alloc(self, rng: random.Random, size: int, align: int, lo: int = 0, hi: int = 1 << 64,
              node: int | None = None) -> int | None:
        """A free, aligned run of `size` bytes in [lo, hi), on `node` first; None if none is left."""
        got = self.alloc_many(rng, [size], align, lo, hi, node)
        return got[0] if got else None

    def alloc_many(self, rng: random.Random, sizes: list[int], align: int, lo: int = 0, hi: int = 1 << 64,
                   node: int | None = None) -> list[int]:
        """`alloc` for each of `sizes` in turn, the same draws in the same order;
        stops at the first that finds no room (a short answer)."""
        placers = [self._placer(lo, hi, where) for where in ((node, None) if node is not None else (None,))]
        out: list[int] = []
        while len(out) < len(sizes):
            out += placers[0].place_many(rng, sizes[len(out):] if out else sizes, align)
            if len(out) == len(sizes):
                break
            for other in placers[1:]:        # the node had no room for this one: the other nodes
                got = other.place_many(rng, [sizes[len(out)]], align)
                if got:
                    out += got
                    break
            else:
                break
        return out

    def _placer(self, lo: int, hi: int, node: int | None) -> RandomPlacer:
        key = (lo, hi, node)
        placer = self._placers.get(key)
        if placer is None:
            placer = self._placers[key] = RandomPlacer(self.space(lo, hi, node), self.m.taken)
        return placer
