"""One device's DMA address space behind an IOMMU (docs/SOURCES.md §11).

drivers/iommu/dma-iommu.c iommu_dma_alloc_iova gives a PCI device IOVAs below
4 GiB first; drivers/iommu/iova.c __alloc_and_insert_iova_range walks the
space top-down from that limit, aligning each allocation to its power-of-two
size; the granule is 4 KiB and IOVA page 0 is never used. The MSI window and
the PCI host-bridge windows are reserved (iova_reserve_iommu_regions). A DMA
address keeps the buffer's offset within its page.
"""

from __future__ import annotations

from kdumpsim import defaults as D

PAGE = D.PAGE_SIZE


class IovaDomain:
    def __init__(self, reserved: list[tuple[int, int]], limit: int = D.IOVA_SAC_LIMIT, in_use: int = 0):
        self.reserved = sorted(reserved)
        self.top = (limit - in_use) // PAGE * PAGE       # other live mappings of the device sit above

    def map_many(self, phys: list[int], sizes: list[int]) -> list[int]:
        """The DMA address of each [phys, phys+size) in turn: a fresh IOVA run, top-down."""
        out: list[int] = []
        top = self.top
        clear = self._clear_from(top)
        for p, size in zip(phys, sizes):
            offset = p % PAGE
            n = offset + size
            if 0 < n <= PAGE:
                span = PAGE
                start = top - PAGE              # `top` is page aligned
            else:
                span = (1 << ((n - 1) // PAGE).bit_length()) * PAGE   # size-aligned: align_mask <<= fls(size - 1)
                start = (top - span) // span * span
            if start < clear:                   # a reserved window may be in the way
                while True:
                    hit = next(((s, e) for s, e in self.reserved if s < start + span and start < e), None)
                    if hit is None:
                        break
                    start = (hit[0] - span) // span * span
                clear = self._clear_from(start)
            if start < PAGE:
                self.top = top
                raise ValueError("IOVA space below 4 GiB exhausted")
            top = start
            out.append(start + offset)
        self.top = top
        return out

    def _clear_from(self, top: int) -> int:
        """Runs below `top` that start at or above this overlap no reserved window
        (the highest end of a window starting below `top`)."""
        return max((e for s, e in self.reserved if s < top), default=0)
