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

    def map(self, phys: int, size: int) -> int:
        """The DMA address of [phys, phys+size): a fresh IOVA run, top-down."""
        offset = phys % PAGE
        pages = -(-(offset + size) // PAGE)
        span = (1 << (pages - 1).bit_length()) * PAGE         # size-aligned: align_mask <<= fls(size - 1)
        start = (self.top - span) // span * span
        while True:
            hit = next(((s, e) for s, e in self.reserved if s < start + span and start < e), None)
            if hit is None:
                break
            start = (hit[0] - span) // span * span
        if start < PAGE:
            raise ValueError("IOVA space below 4 GiB exhausted")
        self.top = start
        return start + offset
