"""kexec -p: the crashkernel reservation and the segments loaded into it.

Follows kexec-tools (kexec/arch/i386/crashdump-x86.c load_crashdump_segments,
kexec/crashdump-elf.c, kexec/kexec.c add_buffer/locate_hole/update_purgatory)
and the kernel's crashkernel= handling (arch/x86/kernel/setup.c
reserve_crashkernel, kernel/crash_core.c parse_crashkernel).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, NoReturn

from kdumpsim import defaults as D
from kdumpsim.errors import LayoutError
from kdumpsim.formats import elf
from kdumpsim.machine.crashkernel import capture_kernel_image
from kdumpsim.machine.ranges import FreeRanges, RandomPlacer, align_up
from kdumpsim.units import KiB, MiB, fmt_size, parse_duration

if TYPE_CHECKING:
    from kdumpsim.machine.layout import Machine

KEXEC_LOAD_TIME = parse_duration(D.KEXEC_LOAD_TIME)


# ------------------------------------------------------------------ segments
@dataclass
class Segment:
    """One kexec segment: `data` is loaded at `start`; memory up to `memsz` is zero-filled."""
    name: str
    start: int
    memsz: int
    data: bytes
    hashed: bool = True                 # purgatory verifies every segment but itself
    sources: list[int] | None = None    # 2004 design: pages in first-kernel RAM holding `data`
    image: tuple[str, int] | None = None  # (label, size) when `data` is image_bytes(label, size)

    @property
    def end(self) -> int:
        return self.start + self.memsz


@dataclass
class KexecImage:
    segments: list[Segment]
    cmdline: str
    entry: int                       # where purgatory jumps: the capture kernel
    elfcorehdr: int | None           # address passed with elfcorehdr=
    elfcorehdr_size: int
    backup_src: tuple[int, int] | None    # (start, size) of the memory purgatory backs up
    backup_dest: int | None
    sha256_digest: bytes | None
    sha256_regions: list[tuple[int, int]] = field(default_factory=list)
    method: str = "kexec_load"              # kexec_load | kexec_file_load (docs/SOURCES.md §12)

    def segment(self, name: str) -> Segment | None:
        return next((s for s in self.segments if s.name == name), None)


@lru_cache(maxsize=8)
def image_bytes(label: str, size: int) -> bytes:
    """Stand-in content for a kernel/initrd/purgatory file: the same file every run."""
    return random.Random(f"kdumpsim-image:{label}:{size}").randbytes(size)


def kexec_load(machine: Machine) -> KexecImage:
    """kexec -p by the kexec_load syscall: kexec-tools lays the segments out
    and builds the ELF core headers; load them into simulated RAM."""
    image = _layout_2004(machine) if machine.cfg.design == "2004" else _layout_2005(machine)
    return load_segments(machine, image)


def load_segments(machine: Machine, image: KexecImage) -> KexecImage:
    """Copy every segment into simulated RAM at boot (at most KEXEC_SEGMENT_MAX of them)."""
    if len(image.segments) > D.KEXEC_SEGMENT_MAX:
        raise LayoutError("kexec", f"{len(image.segments)} segments, {image.method} takes at most {D.KEXEC_SEGMENT_MAX}")
    for seg in image.segments:
        if seg.sources is None:
            machine.memory.write(seg.start, seg.data, KEXEC_LOAD_TIME, "kexec")
        else:
            for i, pfn_addr in enumerate(seg.sources):
                chunk = seg.data[i * D.PAGE_SIZE:(i + 1) * D.PAGE_SIZE]
                chunk += bytes(D.PAGE_SIZE - len(chunk))     # kexec copies whole pages
                machine.memory.write(pfn_addr, chunk, KEXEC_LOAD_TIME, "kexec")
    return image


def backup_source(machine: Machine, size: int) -> tuple[int, int] | None:
    """The RAM below `size` that purgatory backs up (kexec-tools get_backup_area:
    the first System RAM range starting below the limit, cut at the limit)."""
    for s, e in machine.ram_ranges:
        if s < size:
            return s, min(e, size) - s
    return None


def _layout_2005(machine: Machine) -> KexecImage:
    """Segments in the reservation, in kexec-tools' order (docs/SOURCES.md §1):
    2005 (i386 vmlinux, KT cd18217): kernel at its link address (the start of
    the reservation), then purgatory, the 16 KiB parameter block, the backup
    region and the ELF core headers bottom-up, the initrd top-down; modern
    (bzImage64, KT HEAD): backup and ELF headers, purgatory, parameters,
    kernel and initrd, all top-down. locate_hole aligns everything to pages."""
    cfg, res = machine.cfg, machine.reservation
    free = FreeRanges([(res.start, res.end)])
    modern = machine.era == "modern"
    segs: dict[str, Segment] = {}

    def add(name: str, memsz: int, align: int, top_down: bool, data: bytes = b"", lo: int = 0) -> Segment:
        memsz = align_up(memsz, D.PAGE_SIZE)
        start = free.alloc(memsz, max(align, D.PAGE_SIZE), top_down=top_down, lo=lo)
        if start is None:
            _too_small(machine, name, memsz)
        segs[name] = Segment(name, start, memsz, data, hashed=name != "purgatory")
        return segs[name]

    kernel, isize = capture_kernel_image(cfg), cfg.kexec.initrd_size
    ksize = kernel.size
    backup_src = backup_source(machine, D.BACKUP_SIZE_2005) if cfg.kexec.backup else None
    kernel_data, purg_data = image_bytes("kernel", ksize), image_bytes("purgatory", D.PURGATORY_SIZE)

    def _elfcorehdr_memsz() -> int:
        # kexec-tools bloats the headers to 16 KiB at least, not at most: a machine
        # with many CPUs or RAM ranges gets what its headers need (issue 17 item 30).
        backup_at = segs["backup"].start if "backup" in segs else None
        return max(D.ELFCOREHDR_MIN_MEMSZ, len(build_elfcorehdr(machine, backup_src, backup_at)))

    if modern:
        if backup_src:
            add("backup", align_up(backup_src[1], D.BACKUP_ALIGN), D.BACKUP_ALIGN, True)
        add("elfcorehdr", _elfcorehdr_memsz(), D.ELFCOREHDR_ALIGN, True)
        add("purgatory", D.PURGATORY_SIZE, 16, True, purg_data)
        add("params", D.PARAMS_SIZE, 16, True)
        # bzImage64: the protected-mode kernel in a segment of memsz init_size, kernel_alignment aligned.
        add("kernel", kernel.memsz, kernel.align, True, kernel_data)
        if isize:
            add("initrd", isize, D.PAGE_SIZE, True, image_bytes("initrd", isize), lo=16 * MiB)
    else:
        # A vmlinux is linked to run at one address: the reservation's start (paper 3.1).
        add("kernel", ksize, D.PAGE_SIZE, False, kernel_data, lo=res.start)
        if segs["kernel"].start != res.start:
            _too_small(machine, "kernel", ksize)
        add("purgatory", D.PURGATORY_SIZE, 16, False, purg_data)
        add("params", D.PARAMS_SIZE, 16, False)
        if backup_src:
            add("backup", align_up(backup_src[1], D.BACKUP_ALIGN), D.BACKUP_ALIGN, False)
        add("elfcorehdr", _elfcorehdr_memsz(), D.ELFCOREHDR_ALIGN, False)
        if isize:
            add("initrd", isize, D.PAGE_SIZE, True, image_bytes("initrd", isize), lo=16 * MiB)
    backup = segs.get("backup")
    if backup is not None:
        backup.data = bytes(backup.memsz)       # kexec-tools loads a zeroed buffer, and hashes it
    hdr_seg = segs["elfcorehdr"]
    hdr_seg.data = build_elfcorehdr(machine, backup_src, backup.start if backup else None)
    if len(hdr_seg.data) > hdr_seg.memsz:
        _too_small(machine, "elfcorehdr", len(hdr_seg.data))
    ordered = sorted(segs.values(), key=lambda s: s.start)     # kexec-tools sorts by address
    cmdline = capture_cmdline(machine, ordered, hdr_seg.start)
    segs["params"].data = _params_segment(cmdline)
    if len(segs["params"].data) > segs["params"].memsz:
        raise LayoutError("kexec.append", f"command line of {len(cmdline)} bytes does not fit the parameter block")
    for name in ("kernel", "initrd", "purgatory"):
        if name in segs:
            segs[name].image = (name, len(segs[name].data))
    digest = None if cfg.kexec.skip_checks else _sha256_cached(ordered)
    regions = [(s.start, s.memsz) for s in ordered if s.hashed]
    return KexecImage(ordered, cmdline, segs["kernel"].start, hdr_seg.start, len(hdr_seg.data), backup_src,
                      backup.start if backup else None, digest, regions)


def _layout_2004(machine: Machine) -> KexecImage:
    """The design the paper replaced (section 2.2): the capture kernel runs at
    1 MB using the first 16 MB; kexec pre-loads it into whatever page frames it
    can grab, and copies it into place at the crash after the first 16 MB are
    backed up to a region reserved at boot; no sha256 check."""
    cfg, res = machine.cfg, machine.reservation
    if res.size < D.BACKUP_SIZE_2004 + machine.ncpus * D.CRASH_NOTE_BYTES:
        _too_small(machine, "backup", D.BACKUP_SIZE_2004 + machine.ncpus * D.CRASH_NOTE_BYTES)
    rng = machine.rng("kexec-2004-pages")
    low = FreeRanges([(0, D.BACKUP_SIZE_2004)])
    # Source pages never sit in a destination (kimage_alloc_page avoids them).
    clipped = FreeRanges(list(machine.first_kernel_free.ranges))
    clipped.remove(0, D.BACKUP_SIZE_2004)
    pool = RandomPlacer(clipped.ranges, machine.taken)
    segs: list[Segment] = []

    def add(name: str, data: bytes, dest: int) -> None:
        memsz = align_up(len(data), D.PAGE_SIZE)
        if low.alloc(memsz, D.PAGE_SIZE, lo=dest, hi=dest + memsz) != dest:
            _too_small(machine, name, memsz)
        n = memsz // D.PAGE_SIZE      # free first-kernel pages, 'wherever it can grab a page frame' (paper 2.3)
        pages = pool.place_many(rng, [D.PAGE_SIZE] * n, D.PAGE_SIZE)
        if len(pages) < n:
            _too_small(machine, "first-kernel RAM", D.PAGE_SIZE)
        segs.append(Segment(name, dest, memsz, data, hashed=False, sources=pages))

    ksize = cfg.kexec.capture_kernel_size
    add("kernel", image_bytes("kernel", ksize), 1 * MiB)
    if cfg.kexec.initrd_size:
        isize = cfg.kexec.initrd_size
        add("initrd", image_bytes("initrd", isize), D.BACKUP_SIZE_2004 - align_up(isize, D.PAGE_SIZE))
    cmdline = f"{cfg.kexec.append} memmap=exactmap memmap=640K@0K memmap={D.BACKUP_SIZE_2004 // KiB - 1024}K@1024K"
    add("params", _params_segment(cmdline), 0x90000)   # the real-mode zero page, where setup.S wants it
    segs.sort(key=lambda s: s.start)
    return KexecImage(segs, cmdline, 1 * MiB, None, 0, (0, D.BACKUP_SIZE_2004), res.start, None, [])


def _too_small(machine: Machine, what: str, need: int) -> NoReturn:
    k = machine.cfg.kexec
    total = capture_kernel_image(machine.cfg).memsz + (k.initrd_size or 0) + D.PURGATORY_SIZE + D.PARAMS_SIZE \
        + D.ELFCOREHDR_MIN_MEMSZ + D.BACKUP_SIZE_2005
    hint = (f"; the segments need about {-(-total // MiB)}M in all, ask for more"
            if machine.cfg.design != "2004" else "")
    raise LayoutError("kexec.crashkernel", f"reservation {machine.describe_reservation()} is too small: "
                      f"no room for the {what} segment ({fmt_size(need)}) next to the others{hint}")


def _sha256_of(segs: list[Segment]) -> bytes:
    """kexec-tools update_purgatory: every segment but purgatory, zero-filled up to memsz."""
    h = hashlib.sha256()
    for s in segs:
        if s.hashed:
            h.update(s.data)
            h.update(bytes(s.memsz - len(s.data)))
    return h.digest()


_DIGESTS: dict[tuple, bytes] = {}
_STATES: dict[tuple, list] = {}


def _digest_key(segs: list[Segment]) -> tuple:
    return tuple((s.start, s.memsz, s.image or s.data) for s in segs if s.hashed)


def hash_states(segs: list[Segment], chunk: int) -> list:
    """sha256 states at every `chunk` boundary of the hashed segments as
    loaded (purgatory's order): states[i] has hashed chunks 0..i-1. Purgatory
    resumes from one when no write touched the chunks before it: the same
    digest, without rehashing bytes nobody changed. Remembered per layout."""
    key = (_digest_key(segs), chunk)
    if key not in _STATES:
        if len(_STATES) > 16:
            _STATES.clear()
        h, states = hashlib.sha256(), []
        for s in segs:
            if not s.hashed:
                continue
            for off in range(0, s.memsz, chunk):
                states.append(h.copy())
                n = min(chunk, s.memsz - off)
                part = s.data[off:off + n]
                h.update(part)
                h.update(bytes(n - len(part)))
        states.append(h.copy())
        _STATES[key] = states
    return _STATES[key]


def _sha256_cached(segs: list[Segment]) -> bytes:
    """The same digest, remembered across runs of a sweep: the key holds every
    hashed byte (small segments verbatim, stand-in images by their label and
    size, which determine their bytes), so equal keys mean equal input."""
    key = _digest_key(segs)
    if key not in _DIGESTS:
        if len(_DIGESTS) > 64:
            _DIGESTS.clear()
        _DIGESTS[key] = _sha256_of(segs)
    return _DIGESTS[key]


def _params_segment(cmdline: str) -> bytes:
    """x86 boot parameters: the 4 KiB zero page, then the NUL-terminated command line."""
    zero_page = bytearray(D.PAGE_SIZE)
    zero_page[0x202:0x206] = b"HdrS"        # setup header magic (Documentation/x86/boot.rst)
    return bytes(zero_page) + cmdline.encode() + b"\0"


def capture_cmdline(machine: Machine, segs: list[Segment], elfcorehdr: int) -> str:
    """The capture kernel's command line as kexec-tools builds it: the user's
    --append, then `memmap=exactmap` and one `memmap=` per usable range (2005;
    kexec-tools passes an E820 table instead since 2014), then `elfcorehdr=`."""
    parts = [machine.cfg.kexec.append.strip()]
    if machine.era == "2005":
        usable = FreeRanges([(machine.reservation.start, machine.reservation.end)])
        for s in segs:
            if s.name in ("backup", "elfcorehdr"):
                usable.remove(s.start, s.end)
        low = backup_source(machine, D.BACKUP_SIZE_2005) if machine.cfg.kexec.backup else None
        ranges = ([(low[0], low[0] + low[1])] if low else []) + usable.ranges
        parts.append("memmap=exactmap")
        parts += [f"memmap={(e - s) // KiB}K@{s // KiB}K" for s, e in ranges if e - s >= D.MEMMAP_MIN_RANGE]
    parts.append(f"elfcorehdr={elfcorehdr // KiB}K")
    return " ".join(p for p in parts if p)


# ------------------------------------------------------------------ ELF core headers
def build_elfcorehdr(machine: Machine, backup_src: tuple[int, int] | None, backup_dest: int | None) -> bytes:
    """kexec-tools crash_create_elf{64,32}_headers: ELF header; one PT_NOTE per
    CPU (p_offset = p_paddr = the note buffer); the VMCOREINFO PT_NOTE (kernels
    since 2.6.24); on x86_64 the kernel-text PT_LOAD (modern); then one PT_LOAD
    per System RAM range, the reservation cut out, the backup source range's
    p_offset pointing at the backup copy."""
    cls = elf.ELFCLASS32 if machine.cfg.kexec.elf_core_headers == "elf32" else elf.ELFCLASS64
    lay = elf.layout_for(cls)
    phdrs = [elf.Phdr(elf.PT_NOTE, 0, a, 0, a, machine.crash_note_size, machine.crash_note_size, 0)
             for a in machine.crash_notes]
    if machine.vmcoreinfo_addr is not None:
        a = machine.vmcoreinfo_addr
        phdrs.append(elf.Phdr(elf.PT_NOTE, 0, a, 0, a, D.PAGE_SIZE, D.PAGE_SIZE, 0))
    rwx = elf.PF_R | elf.PF_W | elf.PF_X
    if machine.arch == "x86_64" and machine.era == "modern":
        ks, ke = machine.kernel_image
        vaddr = D.START_KERNEL_MAP + ks
        phdrs.append(elf.Phdr(elf.PT_LOAD, rwx, ks, vaddr, ks, ke - ks, ke - ks, 0))
    for s, e in crash_memory_ranges(machine, backup_src):
        offset = backup_dest if (backup_src and backup_dest is not None and s == backup_src[0]
                                 and e - s == backup_src[1]) else s
        vaddr = machine.direct_map(s)
        if vaddr is None:   # i386 highmem: 0 in 2005 (paper 4.2), -1 in KT HEAD
            vaddr = 0 if machine.era == "2005" else (1 << (32 if cls == elf.ELFCLASS32 else 64)) - 1
        phdrs.append(elf.Phdr(elf.PT_LOAD, rwx, offset, vaddr, s, e - s, e - s, 0))
    machine_id = elf.EM_X86_64 if machine.arch == "x86_64" else elf.EM_386
    return lay.pack_ehdr(machine_id, len(phdrs)) + b"".join(lay.pack_phdr(p) for p in phdrs)


def crash_memory_ranges(machine: Machine, backup_src: tuple[int, int] | None) -> list[tuple[int, int]]:
    """System RAM minus the reservation (kexec-tools get_crash_memory_ranges),
    with the backed-up low range split off so it gets its own PT_LOAD."""
    free = FreeRanges(list(machine.ram_ranges))
    for span in machine.reservation.spans:          # the low region of a ,high reservation too
        free.remove(*span)
    if machine.cma is not None:
        # The CMA area becomes capture-kernel RAM and leaves the dump, as the
        # kernel's elf_header_exclude_ranges does on the kexec_file_load path
        # (the only path that passes it: docs/SOURCES.md §11).
        free.remove(*machine.cma)
    out: list[tuple[int, int]] = []
    for s, e in free.ranges:
        if backup_src and s == backup_src[0] and e > s + backup_src[1]:
            out.append((s, s + backup_src[1]))
            out.append((s + backup_src[1], e))
        else:
            out.append((s, e))
    return out
