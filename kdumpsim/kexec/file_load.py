"""kexec -s -p: kexec_file_load, where the kernel itself lays out the
segments, builds the ELF core headers and supplies purgatory
(docs/SOURCES.md §12).

The kernel's order (arch/x86/kernel/kexec-bzimage64.c bzImage64_load):
crash_load_segments first (4.18: a backup segment for the RAM below 1 MiB,
then the elfcorehdr; both bottom-up, so at the reservation's start), then
purgatory, the boot parameters with the command line and setup_data, the
kernel (memsz init_size) and the initrd, each top-down. kexec_add_buffer
rounds every memsz to a page and every alignment up to a page; the crash
image's holes are searched inside crashk_res only. Purgatory hashes every
segment but itself, in the order they were added; with crash hotplug (6.6+)
the elfcorehdr is left out so the kernel may rewrite it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kdumpsim import defaults as D
from kdumpsim.errors import LayoutError
from kdumpsim.formats import elf
from kdumpsim.kexec.load import (
    KexecImage,
    Segment,
    _params_segment,
    _sha256_cached,
    _too_small,
    image_bytes,
    load_segments,
)
from kdumpsim.machine.crashkernel import capture_kernel_image
from kdumpsim.machine.ranges import FreeRanges, align_up

if TYPE_CHECKING:
    from kdumpsim.machine.layout import Machine

KEXEC_FILE_LOAD = "kexec_file_load"


def kernel_version(machine: Machine) -> str:
    return machine.cfg.kernel.version or D.KERNEL_VERSION_MODERN


def crash_hotplug(machine: Machine) -> bool:
    """CONFIG_CRASH_HOTPLUG (Linux 6.6+, Kconfig default y): the elfcorehdr is
    sized for hotplug and left out of purgatory's digest."""
    return kernel_version(machine) == "6.6"


def notes_for_possible_cpus(machine: Machine) -> bool:
    """6.6+ describes every possible CPU (for_each_possible_cpu, from the crash
    hotplug series), before that every present one."""
    return kernel_version(machine) == "6.6"


def has_backup_region(machine: Machine) -> bool:
    """Before 5.8 the kernel backed up the first RAM range below 1 MiB into
    the reservation, as kexec-tools does ("x86/kdump: Remove the backup region
    handling" removed it; the low 1 MiB has been left out of the headers since)."""
    return kernel_version(machine) == "4.18"


def kexec_file_load(machine: Machine) -> KexecImage:
    """kexec -s -p: the segments as the kernel places them, in the order it
    adds them, loaded into simulated RAM."""
    res = machine.reservation
    free = FreeRanges([(res.start, res.end)])
    segs: list[Segment] = []

    def add(name: str, bufsz: int, memsz: int, align: int, top_down: bool, lo: int = 0,
            data: bytes = b"", hashed: bool = True) -> Segment:
        """kexec_add_buffer: memsz to a page, align at least a page, a hole in crashk_res."""
        memsz = align_up(memsz, D.PAGE_SIZE)
        start = free.alloc(memsz, max(align, D.PAGE_SIZE), top_down=top_down, lo=lo)
        if start is None:
            _too_small(machine, name, memsz)
        seg = Segment(name, start, memsz, data or bytes(bufsz), hashed=hashed)
        segs.append(seg)
        return seg

    backup_src = _backup_source(machine) if has_backup_region(machine) else None
    backup = add("backup", 1, backup_src[1], D.PAGE_SIZE, False) if backup_src else None
    hotplug = crash_hotplug(machine)
    hdr_data = build_kernel_elfcorehdr(machine, backup_src, backup.start if backup else None)
    hdr_memsz = hotplug_elfcorehdr_size() if hotplug else len(hdr_data)
    hdr = add("elfcorehdr", len(hdr_data), hdr_memsz, D.KEXEC_FILE_ELF_CORE_HEADER_ALIGN, False,
              data=hdr_data, hashed=not hotplug)
    # the kernel's own purgatory (arch/x86/purgatory), its size taken as kexec-tools' (assumption)
    purg = add("purgatory", D.PURGATORY_SIZE, D.PURGATORY_SIZE, 16, True, lo=D.KEXEC_FILE_MIN_PURGATORY_ADDR,
               data=image_bytes("purgatory-kernel", D.PURGATORY_SIZE), hashed=False)
    purg.image = ("purgatory-kernel", D.PURGATORY_SIZE)
    user = (machine.cfg.kexec.append or "").strip()
    if len(user) + 1 + D.MAX_ELFCOREHDR_STR_LEN > D.CMDLINE_SIZE_X86:
        # bzImage64_load: "Appending elfcorehdr=<addr> to command line exceeds maximum allowed length"
        raise LayoutError("kexec.append", f"command line of {len(user)} bytes: with elfcorehdr=0x... it exceeds "
                                          f"the kernel's {D.CMDLINE_SIZE_X86}-byte limit (cmdline_size)")
    cmdline = f"elfcorehdr={hdr.start:#x} " + user
    params_data = _params_segment(cmdline)
    params_bufsz = params_size(len(user) + 1)
    add("params", params_bufsz, params_bufsz, 16, True, lo=D.KEXEC_FILE_MIN_BOOTPARAM_ADDR,
        data=params_data + bytes(max(0, params_bufsz - len(params_data))))
    kernel = capture_kernel_image(machine.cfg)
    ks = add("kernel", kernel.size, kernel.memsz, kernel.align, True, lo=D.KEXEC_FILE_MIN_KERNEL_LOAD_ADDR,
             data=image_bytes("kernel", kernel.size))
    ks.image = ("kernel", kernel.size)
    isize = machine.cfg.kexec.initrd_size
    if isize:
        rd = add("initrd", isize, isize, D.PAGE_SIZE, True, lo=D.KEXEC_FILE_MIN_INITRD_LOAD_ADDR,
                 data=image_bytes("initrd", isize))
        rd.image = ("initrd", isize)
    digest = _sha256_cached(segs)
    regions = [(s.start, s.memsz) for s in segs if s.hashed]
    return load_segments(machine, KexecImage(segs, cmdline, ks.start, hdr.start, len(hdr_data), backup_src,
                                             backup.start if backup else None, digest, regions,
                                             method=KEXEC_FILE_LOAD))


def params_size(cmdline_len: int) -> int:
    """bzImage64_load's boot-parameter buffer: boot_params + the command line +
    room for "elfcorehdr=0x... ", 16-aligned, then (no EFI runtime map: a BIOS
    boot, assumption) the EFI setup_data and the RNG seed setup_data."""
    head = align_up(D.BOOT_PARAMS_SIZE + cmdline_len + D.MAX_ELFCOREHDR_STR_LEN, 16)
    return head + D.SETUP_DATA_HDR + D.EFI_SETUP_DATA_SIZE + D.SETUP_DATA_HDR + D.RNG_SEED_LENGTH


def hotplug_elfcorehdr_size() -> int:
    """crash_load_segments with CONFIG_CRASH_HOTPLUG and MEMORY_HOTPLUG: room
    for 2 + NR_CPUS_DEFAULT + CRASH_MAX_MEMORY_RANGES program headers."""
    return (2 + D.NR_CPUS_DEFAULT + D.CRASH_MAX_MEMORY_RANGES) * 56 + 64


def _backup_source(machine: Machine) -> tuple[int, int] | None:
    """4.18 determine_backup_region: the first System RAM resource below 1 MiB, whole."""
    for s, e in machine.ram_ranges:
        if s < D.LOW_1M:
            return s, min(e, D.LOW_1M) - s
    return None


def kernel_ram_ranges(machine: Machine, low_1m: bool) -> list[tuple[int, int]]:
    """prepare_elf_headers: System RAM, then elf_header_exclude_ranges: the
    low 1 MiB (5.8+), crashk_res, crashk_low_res and the CMA ranges."""
    free = FreeRanges(list(machine.ram_ranges))
    if low_1m:
        free.remove(0, D.LOW_1M)
    for span in machine.reservation.spans:
        free.remove(*span)
    if machine.cma is not None:
        free.remove(*machine.cma)
    return list(free.ranges)


def build_kernel_elfcorehdr(machine: Machine, backup_src: tuple[int, int] | None,
                            backup_dest: int | None) -> bytes:
    """crash_prepare_elf64_headers: the ELF header; one PT_NOTE per present
    CPU (6.6+: per possible CPU, hotplug slots too) for its per-cpu note_buf_t
    (sizeof(note_buf_t)); the VMCOREINFO PT_NOTE
    (VMCOREINFO_NOTE_SIZE); the kernel-text PT_LOAD (_text.._end); one PT_LOAD
    per RAM range, vaddr __va(paddr). The buffer is zero-padded to
    ELF_CORE_HEADER_ALIGN. 4.18: the backed-up range's p_offset is the backup
    segment (prepare_elf64_ram_headers_callback)."""
    lay = elf.layout_for(elf.ELFCLASS64)
    size = machine.crash_note_size
    cpus = machine.crash_notes + (machine.hotplug_notes if notes_for_possible_cpus(machine) else [])
    phdrs = [elf.Phdr(elf.PT_NOTE, 0, a, 0, a, size, size, 0) for a in cpus]
    if machine.vmcoreinfo_addr is not None:
        a = machine.vmcoreinfo_addr
        phdrs.append(elf.Phdr(elf.PT_NOTE, 0, a, 0, a, D.VMCOREINFO_NOTE_SIZE, D.VMCOREINFO_NOTE_SIZE, 0))
    rwx = elf.PF_R | elf.PF_W | elf.PF_X
    ks, ke = machine.kernel_image
    phdrs.append(elf.Phdr(elf.PT_LOAD, rwx, ks, D.START_KERNEL_MAP + ks, ks, ke - ks, ke - ks, 0))
    for s, e in kernel_ram_ranges(machine, low_1m=backup_src is None):
        offset = backup_dest if backup_src and backup_dest is not None and (s, e - s) == backup_src else s
        vaddr = machine.direct_map(s)
        assert vaddr is not None           # x86_64 maps all RAM
        phdrs.append(elf.Phdr(elf.PT_LOAD, rwx, offset, vaddr, s, e - s, e - s, 0))
    raw = lay.pack_ehdr(elf.EM_X86_64, len(phdrs)) + b"".join(lay.pack_phdr(p) for p in phdrs)
    return raw + bytes(align_up(len(raw), D.KEXEC_FILE_ELF_CORE_HEADER_ALIGN) - len(raw))

