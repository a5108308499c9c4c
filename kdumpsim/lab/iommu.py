"""Intel VT-d (QEMU `-device intel-iommu`): read the remapping state at the
pause and translate the NIC's IOVAs to physical addresses from a RAM image.

Registers (Intel VT-d spec rev 3, section 11.4; QEMU hw/i386/intel_iommu_internal.h):
GSTS_REG 0x1C (bit 31 TES: translation enabled), RTADDR_REG 0x20 (root table
address, bits 12-63).  The DRHD MMIO base is the one the guest kernel logs
("DMAR: DRHD base: 0x...", from the ACPI DMAR table; QEMU q35 puts it at
0xfed90000).  Legacy-mode tables (VT-d spec 9.1-9.3; Linux
drivers/iommu/intel/iommu.h struct root_entry/context_entry):
root entry[bus] = 16 bytes, lo bit 0 present, bits 12-63 context-table
pointer; context entry[devfn] = 16 bytes, lo bit 0 present, bits 12-63
second-level page-table pointer, hi bits 0-2 AW (levels = AW + 2).
Second-level entries: bit 0 R, bit 1 W, bit 7 PS (large page at levels 2/3),
address bits 12-51.
"""

from __future__ import annotations

import re

DRHD_DEFAULT = 0xFED90000
GSTS, RTADDR = 0x1C, 0x20
ADDR_MASK = 0x000FFFFFFFFFF000


def drhd_base(serial_lines) -> int:
    for _, line in serial_lines:
        m = re.search(r"DRHD base: (0x[0-9a-fA-F]+)", line)
        if m:
            return int(m.group(1), 16)
    return DRHD_DEFAULT


def read_state(qmp, base: int, bdf: tuple[int, int, int] | None) -> dict:
    gsts = qmp.read_phys(base + GSTS, 1, "w")[0]
    lo, hi = qmp.read_phys(base + RTADDR, 2, "w")
    return {"drhd": base, "gsts": gsts, "translation_enabled": bool(gsts >> 31 & 1),
            "rtaddr": (hi << 32) | lo, "bdf": list(bdf) if bdf else None}


class Translator:
    """Walks the legacy-mode tables in a RAM image (`read(paddr, size)`)."""

    def __init__(self, read, rtaddr: int, bus: int, devfn: int):
        self.read = read
        root = read((rtaddr & ADDR_MASK) + 16 * bus, 16)
        self.ok = False
        if root is None:
            return
        r_lo = int.from_bytes(root[:8], "little")
        if not r_lo & 1:
            return
        ctx = read((r_lo & ADDR_MASK) + 16 * devfn, 16)
        if ctx is None:
            return
        c_lo, c_hi = int.from_bytes(ctx[:8], "little"), int.from_bytes(ctx[8:], "little")
        if not c_lo & 1:
            return
        self.pt = c_lo & ADDR_MASK
        self.levels = (c_hi & 7) + 2
        self.translation_type = (c_lo >> 2) & 3    # 0: untranslated only, 2: pass-through
        self.domain = (c_hi >> 8) & 0xFFFF
        self.ok = True

    def translate(self, iova: int) -> int | None:
        if not self.ok:
            return None
        if self.translation_type == 2:
            return iova
        table = self.pt
        for level in range(self.levels, 0, -1):
            shift = 12 + 9 * (level - 1)
            raw = self.read(table + 8 * ((iova >> shift) & 0x1FF), 8)
            if raw is None:
                return None
            pte = int.from_bytes(raw, "little")
            if not pte & 3:
                return None
            if level == 1 or (pte >> 7) & 1:
                return (pte & ADDR_MASK & ~((1 << shift) - 1)) | (iova & ((1 << shift) - 1))
            table = pte & ADDR_MASK
        return None
