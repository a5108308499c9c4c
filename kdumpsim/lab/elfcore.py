"""Read ELF64 core files by physical address: /proc/vmcore copies and QEMU's
dump-guest-memory output.

Both are ELF64 ET_CORE files whose PT_LOAD program headers give p_paddr,
p_offset and p_filesz (ELF gABI; Linux fs/proc/vmcore.c and kexec-tools
kexec/crashdump-elf.c build the vmcore's; QEMU dump/dump.c writes one PT_LOAD
per guest RAM block when paging is off).  A vmcore's first PT_LOAD is the
kernel-text alias (vaddr = _stext), whose paddr range repeats RAM that a later
PT_LOAD also covers; `pages()` keeps the first file copy of each page in
ascending-paddr RAM order and skips that alias.
"""

from __future__ import annotations

import dataclasses
import mmap
import struct
from pathlib import Path

import numpy as np

from . import LabError

PAGE = 4096
PT_LOAD = 1


@dataclasses.dataclass(frozen=True)
class Load:
    paddr: int
    vaddr: int
    offset: int
    filesz: int


class Core:
    """An ELF core file opened read-only with its PT_LOADs."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fh = open(self.path, "rb")
        size = self.path.stat().st_size
        if size < 64:
            raise LabError(f"{self.path}: too small for an ELF header")
        self.buf = mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_READ)
        if self.buf[:4] != b"\x7fELF" or self.buf[4] != 2:
            raise LabError(f"{self.path}: not an ELF64 file")
        (e_phoff,) = struct.unpack_from("<Q", self.buf, 0x20)
        e_phentsize, e_phnum = struct.unpack_from("<HH", self.buf, 0x36)
        loads = []
        for i in range(e_phnum):
            p_type, _flags, off, vaddr, paddr, filesz, _memsz, _align = struct.unpack_from(
                "<IIQQQQQQ", self.buf, e_phoff + i * e_phentsize)
            if p_type == PT_LOAD and filesz:
                loads.append(Load(paddr, vaddr, off, filesz))
        self.loads = loads
        self.file_size = size
        self.end = max((ld.offset + ld.filesz for ld in loads), default=0)
        if self.end > size:
            raise LabError(f"{self.path}: PT_LOADs end at {self.end:#x} beyond the file ({size:#x})")
        self.array = np.frombuffer(self.buf, dtype=np.uint8)

    def ram_loads(self) -> list[Load]:
        """PT_LOADs of RAM: without a leading kernel-text alias (vaddr outside the
        direct map), in ascending paddr."""
        loads = list(self.loads)
        if len(loads) > 1 and loads[0].vaddr >= 0xffffffff80000000:
            loads = loads[1:]
        return sorted(loads, key=lambda ld: ld.paddr)

    def page_map(self) -> dict[int, int]:
        """Page-aligned paddr -> file offset, for every whole page in RAM loads."""
        out: dict[int, int] = {}
        for ld in self.ram_loads():
            start = (ld.paddr + PAGE - 1) & ~(PAGE - 1)
            end = (ld.paddr + ld.filesz) & ~(PAGE - 1)
            base = ld.offset - ld.paddr
            for pa in range(start, end, PAGE):
                out.setdefault(pa, base + pa)
        return out

    def paddr_to_offset(self, paddr: int) -> int | None:
        for ld in self.ram_loads():
            if ld.paddr <= paddr < ld.paddr + ld.filesz:
                return ld.offset + paddr - ld.paddr
        return None

    def offset_to_paddr(self, offset: int) -> int | None:
        for ld in self.ram_loads():
            if ld.offset <= offset < ld.offset + ld.filesz:
                return ld.paddr + offset - ld.offset
        return None

    def read(self, paddr: int, size: int) -> bytes | None:
        off = self.paddr_to_offset(paddr)
        if off is None or self.paddr_to_offset(paddr + size - 1) is None:
            return None
        return bytes(self.buf[off:off + size])

    def page(self, paddr: int) -> np.ndarray | None:
        off = self.paddr_to_offset(paddr)
        if off is None:
            return None
        return self.array[off:off + PAGE]

    def find_all(self, needle: bytes) -> list[int]:
        """File offsets of every occurrence of `needle` inside RAM loads."""
        hits = []
        for ld in self.ram_loads():
            pos = self.buf.find(needle, ld.offset, ld.offset + ld.filesz)
            while pos != -1:
                hits.append(pos)
                pos = self.buf.find(needle, pos + 1, ld.offset + ld.filesz)
        return hits

    def close(self) -> None:
        self.array = None
        self.buf.close()
        self._fh.close()
