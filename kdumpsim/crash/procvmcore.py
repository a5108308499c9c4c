"""/proc/vmcore in the capture kernel (paper 4.5; fs/proc/vmcore.c).

vmcore_init reads the ELF core headers at `elfcorehdr=` from old memory
(kexec-tools' on the kexec_load path, the kernel's crash_prepare_elf64_headers
on kexec_file_load: no backup PT_LOAD, RAM from 1 MiB; docs/SOURCES.md §12),
sanity-checks them (bad headers: no /proc/vmcore), merges every PT_NOTE into
one (empty note buffers are dropped), and lays the file out:
- 2005 (2.6.13): notes right after the program headers, each PT_LOAD's data
  right after the previous one;
- modern: notes at the first page boundary, every PT_LOAD's data on a page
  boundary of the file plus the in-page offset of its source address
  (process_ptload_program_headers_elf64).
The layout says, for every byte of the file, where in old memory it comes from.
"""

from __future__ import annotations

from kdumpsim import defaults as D
from kdumpsim.formats import elf
from kdumpsim.formats.vmcorefile import Chunk, VmcoreLayout
from kdumpsim.machine.ram import PhysicalMemory
from kdumpsim.machine.ranges import align_down, align_up

MAX_HEADER_BYTES = 1 << 20   # far beyond 16 segments' worth; a corrupt e_phnum past this fails the allocation


class VmcoreInitError(Exception):
    """/proc/vmcore is not set up (its size is 0); the message says why, like the kernel's warning."""


def vmcore_init(mem: PhysicalMemory, addr: int, time: int, arch: str, era: str,
                max_phys: int) -> VmcoreLayout:
    """Parse and merge the headers at `addr` as they are in RAM at `time`."""
    ident = mem.read(addr, 16, time)
    if ident[:4] != b"\x7fELF":
        raise VmcoreInitError("Warning: Core image elf header is not sane (bad magic)")
    cls = ident[4]
    if cls not in (elf.ELFCLASS32, elf.ELFCLASS64):
        raise VmcoreInitError(f"Kdump: Core image is not ELF32 or ELF64 (class {cls})")
    lay = elf.layout_for(cls)
    ehdr = lay.unpack_ehdr(mem.read(addr, lay.ehdr_size, time))
    _check_ehdr(ehdr, lay, arch)
    phsize = ehdr.e_phnum * lay.phdr_size
    if lay.ehdr_size + phsize > MAX_HEADER_BYTES:
        raise VmcoreInitError(f"Kdump: cannot allocate {phsize} bytes for {ehdr.e_phnum} program headers")
    raw = mem.read(addr + ehdr.e_phoff, phsize, time)
    phdrs = [lay.unpack_phdr(raw, i * lay.phdr_size) for i in range(ehdr.e_phnum)]
    notes, kept, dropped = _merge_notes(mem, phdrs, time)
    loads = [p for p in phdrs if p.p_type == elf.PT_LOAD]
    if sum(p.p_memsz for p in loads) > 2 * max_phys or any(p.p_offset + p.p_memsz > 2 * max_phys for p in loads):
        raise VmcoreInitError("Kdump: PT_LOAD headers describe memory the machine does not have")
    return _layout(lay, ehdr.e_machine, notes, loads, modern=(era == "modern"), kept=kept, dropped=dropped)


def _check_ehdr(e: elf.Ehdr, lay: elf.ElfLayout, arch: str) -> None:
    """parse_crash_elf64_headers / parse_crash_elf32_headers: 'Basic Verification'."""
    want_machine = elf.EM_X86_64 if arch == "x86_64" else elf.EM_386
    problems = []
    if e.e_type != elf.ET_CORE:
        problems.append(f"e_type {e.e_type} is not ET_CORE")
    if e.e_machine != want_machine:
        problems.append(f"e_machine {e.e_machine} is not {want_machine}")
    if e.e_ident[6] != 1 or e.e_version != 1:
        problems.append("version is not EV_CURRENT")
    if e.e_ehsize != lay.ehdr_size or e.e_phentsize != lay.phdr_size:
        problems.append("e_ehsize/e_phentsize wrong for the class")
    if e.e_phnum == 0:
        problems.append("e_phnum is 0")
    if problems:
        raise VmcoreInitError("Warning: Core image elf header is not sane (" + "; ".join(problems) + ")")


def _merge_notes(mem: PhysicalMemory, phdrs: list[elf.Phdr], time: int) -> tuple[bytes, list[int], list[int]]:
    """merge_note_headers_elf64: walk each PT_NOTE's notes until n_namesz == 0,
    never past p_memsz ("Exceeded p_memsz, dropping PT_NOTE entry"); buffers
    with nothing in them are dropped."""
    out, kept, dropped = [], [], []
    for p in phdrs:
        if p.p_type != elf.PT_NOTE:
            continue
        size = min(p.p_memsz, MAX_HEADER_BYTES)
        buf = mem.read(p.p_offset, size, time)
        real = elf.notes_real_size(buf)
        if real == 0:
            dropped.append(p.p_offset)
            continue
        out.append(buf[:real])
        kept.append(p.p_offset)
    return b"".join(out), kept, dropped


def _layout(lay: elf.ElfLayout, machine: int, notes: bytes, loads: list[elf.Phdr], modern: bool,
            kept: list[int], dropped: list[int]) -> VmcoreLayout:
    phnum = 1 + len(loads)
    hdr_end = lay.ehdr_size + phnum * lay.phdr_size
    page = D.PAGE_SIZE
    if modern:
        notes_off = align_up(hdr_end, page)                 # elfsz rounded to a page
        off = notes_off + align_up(len(notes), page)        # elfnotes_sz rounded to a page
    else:
        notes_off = hdr_end
        off = notes_off + len(notes)
    out_loads, chunks = [], []
    for p in loads:
        src = p.p_offset                                    # where the data is in old memory
        if modern:
            start, end = align_down(src, page), align_up(src + p.p_memsz, page)
            file_off = off + (src - start)
            chunks.append(Chunk(off, start, end - start, p.p_paddr - (src - start)))
            off += end - start
        else:
            file_off = off
            chunks.append(Chunk(off, src, p.p_memsz, p.p_paddr))
            off += p.p_memsz
        out_loads.append(elf.Phdr(p.p_type, p.p_flags, file_off, p.p_vaddr, p.p_paddr,
                                  p.p_memsz, p.p_memsz, p.p_align))
    note_ph = elf.Phdr(elf.PT_NOTE, 0, notes_off, 0, 0, len(notes), len(notes), 0)
    phdrs = [note_ph] + out_loads
    header = lay.pack_ehdr(machine, phnum) + b"".join(lay.pack_phdr(p) for p in phdrs)
    elfclass = elf.ELFCLASS64 if lay.ehdr_size == 64 else elf.ELFCLASS32
    return VmcoreLayout(elfclass, machine, phdrs, header, notes,
                        notes_off, chunks, off, dropped, kept)


def layout_2004(mem: PhysicalMemory, arch: str, elfclass: int, note_addrs: list[int], note_size: int,
                backup: tuple[int, int], ram_end: int, time: int) -> VmcoreLayout:
    """The 2004 /proc/vmcore: one PT_LOAD for all of memory from 0 (paper 2.3
    item 6), holes included; the first 16 MB read from the backup region;
    register notes from the area after it."""
    lay = elf.layout_for(elfclass)
    notes, kept, dropped = _merge_notes(
        mem, [elf.Phdr(elf.PT_NOTE, 0, a, 0, a, note_size, note_size, 0) for a in note_addrs], time)
    machine = elf.EM_X86_64 if arch == "x86_64" else elf.EM_386
    rwx = elf.PF_R | elf.PF_W | elf.PF_X
    whole = elf.Phdr(elf.PT_LOAD, rwx, 0, 0, 0, ram_end, ram_end, 0)
    v = _layout(lay, machine, notes, [whole], modern=False, kept=kept, dropped=dropped)
    first = v.chunks[0]
    size, dest = backup
    v.chunks = [Chunk(first.offset, dest, size, 0), Chunk(first.offset + size, size, ram_end - size, size)]
    return v
