"""Writing what the capture kernel exports: the /proc/vmcore ELF file and the
/dev/oldmem raw view (paper 4.5.1, 4.5.2).

The layout (kdumpsim.procvmcore) says where each file byte comes from in old
memory; the copy's read times (kdumpsim.capture.VmcoreCopy) say when it was
read. Bytes are streamed in blocks: untouched memory is generated in bulk,
pages something wrote are rebuilt as they were when the copy read them.
Memory use does not grow with the file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING

import numpy as np

from kdumpsim import defaults as D
from kdumpsim.atomic import atomic_write
from kdumpsim.errors import NoVmcore
from kdumpsim.formats.vmcorefile import Chunk

if TYPE_CHECKING:
    from kdumpsim.crash.run import CrashRun
    from kdumpsim.machine.ram import PhysicalMemory

BLOCK = 1 << 20
PAGE = D.PAGE_SIZE
PAGE_SHIFT = PAGE.bit_length() - 1


class _Pattern:
    """Bulk first-kernel content: u64 word at address a is a ^ key."""

    def __init__(self, key: int):
        self.key = np.uint64(key)
        self.steps = np.arange(0, BLOCK, 8, dtype=np.uint64)
        self.out = np.empty(BLOCK // 8, dtype=np.uint64)

    def block(self, addr: int, size: int) -> np.ndarray:
        """`size` bytes at 8-aligned `addr` as u64 words (size a multiple of 8, <= BLOCK)."""
        out = self.out[: size // 8]
        np.add(self.steps[: size // 8], np.uint64(addr), out=out)
        np.bitwise_xor(out, self.key, out=out)
        return out


def _base_block(mem: PhysicalMemory, pat: _Pattern, addr: int, size: int) -> memoryview:
    """Old memory [addr, addr+size) before any write (overlays included)."""
    plain = mem.is_ram(addr, size) and not any(s < addr + size and addr < e for s, e in mem.zero)
    if plain and addr % 8 == 0 and size % 8 == 0:
        words = pat.block(addr, size)
        if mem.overlays:
            mem.apply_overlays(addr, words)
        return memoryview(words).cast("B")
    return memoryview(b"".join(mem.iter_read_base(addr, size)))


def iter_chunk(run: CrashRun, chunk: Chunk, read_time) -> Iterator[memoryview | bytes]:
    """The file bytes of one chunk, block by block, as the copy read them."""
    mem = run.machine.memory
    pat = _Pattern(mem.key)
    for off in range(0, chunk.size, BLOCK):
        addr, n = chunk.paddr + off, min(BLOCK, chunk.size - off)
        touched = mem.touched_in(addr, addr + n)
        base = _base_block(mem, pat, addr, n)
        if not touched:
            yield base
            continue
        buf = bytearray(base)
        for pfn in touched:
            pstart = pfn << PAGE_SHIFT
            lo, hi = max(pstart, addr), min(pstart + PAGE, addr + n)
            when = read_time(chunk.offset + (lo - chunk.paddr))
            buf[lo - addr: hi - addr] = mem.page(pfn, when)[lo - pstart: hi - pstart]
        yield buf


def _need(run: CrashRun) -> None:
    if run.vmcore is None or run.copy is None:
        raise NoVmcore(f"no vmcore: the run's outcome is {run.outcome}"
                       + (f" ({run.vmcore_error})" if run.vmcore_error else ""))


def write_vmcore(run: CrashRun, path: str | os.PathLike) -> int:
    """Write /proc/vmcore as the capture kernel's copy read it; returns its size."""
    _need(run)
    with atomic_write(path) as fh:
        return _stream(run, fh)


def _stream(run: CrashRun, fh: IO[bytes]) -> int:
    v = run.vmcore
    fh.write(v.head_bytes())
    for chunk in v.chunks:
        for block in iter_chunk(run, chunk, run.copy.read_time):
            fh.write(block)
    return v.size


PFN_EXCLUDED = 256      # makedumpfile.h: a run of fewer excluded pages stays in its PT_LOAD


def write_filtered_elf(run: CrashRun, path: str | os.PathLike) -> int:
    """What `makedumpfile -E -d N` writes (makedumpfile.c write_elf_pages_cyclic,
    docs/SOURCES.md §15): the notes, then per /proc/vmcore PT_LOAD the pages
    makedumpfile keeps; a run of PFN_EXCLUDED or more excluded pages is left
    out (the PT_LOAD ends, its p_memsz covering them, a new one starts), a
    shorter run is written as it is. Each page as makedumpfile read it."""
    _need(run)
    from kdumpsim.formats import elf
    v, copy = run.vmcore, run.copy
    lay = elf.layout_for(v.elfclass)
    pieces = []          # (orig chunk, paddr, memsz, filesz, vaddr)
    loads = [p for p in v.phdrs if p.p_type == elf.PT_LOAD]
    for ph, chunk in zip(loads, v.chunks):
        pieces += _filtered_loads(copy, ph, chunk)
    phnum = 1 + len(pieces)
    notes_off = lay.ehdr_size + phnum * lay.phdr_size
    offset = -(-(notes_off + len(v.notes)) // PAGE) * PAGE
    phdrs = [elf.Phdr(elf.PT_NOTE, 0, notes_off, 0, 0, len(v.notes), len(v.notes), 0)]
    for _, paddr, memsz, filesz, vaddr in pieces:
        phdrs.append(elf.Phdr(elf.PT_LOAD, elf.PF_R | elf.PF_W | elf.PF_X, offset if filesz else 0,
                              vaddr, paddr, filesz, memsz, 0))
        offset += filesz
    with atomic_write(path) as fh:
        fh.write(lay.pack_ehdr(v.e_machine, phnum) + b"".join(lay.pack_phdr(p) for p in phdrs) + v.notes)
        fh.write(bytes(-(-(notes_off + len(v.notes)) // PAGE) * PAGE - notes_off - len(v.notes)))
        for chunk, paddr, _, filesz, _ in pieces:
            if filesz:
                piece = Chunk(chunk.offset + paddr - chunk.origin, chunk.paddr + paddr - chunk.origin, filesz, paddr)
                for block in iter_chunk(run, piece, copy.read_time):
                    fh.write(block)
    return offset


def _filtered_loads(copy, ph, chunk: Chunk) -> list[tuple[Chunk, int, int, int, int]]:
    """write_elf_pages_cyclic's PT_LOADs for one input PT_LOAD (page units; the
    last page may be partial)."""
    start, end = ph.p_paddr, ph.p_paddr + ph.p_memsz
    first, last = start // PAGE, -(-end // PAGE)
    keep = copy.dumpable(first, last)
    out = []
    seg, memsz, filesz, excluded = start, 0, 0, 0
    for i, k in enumerate(keep):
        size = min(end, (first + i + 1) * PAGE) - max(start, (first + i) * PAGE)
        if not k:
            excluded += 1
            memsz += size
            continue
        if excluded and excluded >= PFN_EXCLUDED:
            out.append((chunk, seg, memsz, filesz, ph.p_vaddr + seg - start if ph.p_vaddr else 0))
            seg = seg + memsz
            memsz, filesz = 0, 0
        elif excluded:
            filesz = memsz
        excluded = 0
        memsz += size
        filesz += size
    out.append((chunk, seg, memsz, filesz, ph.p_vaddr + seg - start if ph.p_vaddr else 0))
    return out


def write_oldmem(run: CrashRun, path: str | os.PathLike) -> int:
    """/dev/oldmem: old memory linearly, file offset = physical address, holes
    left sparse. Each page is as the vmcore copy read it (pages the vmcore
    does not hold — the reservation — as they were when the copy started)."""
    _need(run)
    mem, copy = run.machine.memory, run.copy
    size = mem.ram[-1][1]
    by_source = sorted(run.vmcore.chunks, key=lambda c: c.paddr)
    with atomic_write(path) as fh:
        fh.truncate(size)
        for start, end in mem.ram:
            for piece, read_time in _oldmem_pieces(start, end, by_source, copy):
                fh.seek(piece.paddr)
                for block in iter_chunk(run, piece, read_time):
                    fh.write(block)
    return size


def _oldmem_pieces(start: int, end: int, chunks: list[Chunk], copy) -> Iterator[tuple[Chunk, object]]:
    """Split a RAM range into pieces read with the vmcore copy's times (where a
    chunk sources it) or at the copy's start (elsewhere)."""
    pos = start
    at_start = lambda _offset: copy.start  # noqa: E731
    for c in chunks:
        lo, hi = max(c.paddr, start), min(c.paddr + c.size, end)
        if lo >= hi:
            continue
        if pos < lo:
            yield Chunk(pos, pos, lo - pos, pos), at_start
        yield Chunk(c.offset + (lo - c.paddr), lo, hi - lo, lo), copy.read_time
        pos = max(pos, hi)
    if pos < end:
        yield Chunk(pos, pos, end - pos, pos), at_start


def dump_bytes(run: CrashRun, paddr: int, size: int) -> bytes:
    """What the vmcore holds for physical address `paddr` (through its PT_LOAD
    map, the backup copy included), for checking readers against."""
    _need(run)
    for c in run.vmcore.chunks:
        if c.origin <= paddr and paddr + size <= c.origin + c.size:
            piece = Chunk(c.offset + (paddr - c.origin), c.paddr + (paddr - c.origin), size, paddr)
            return b"".join(bytes(b) for b in iter_chunk(run, piece, run.copy.read_time))
    raise ValueError(f"{paddr:#x}+{size} is not inside one PT_LOAD of the dump")
