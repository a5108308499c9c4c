"""ELF core-file structures for writing and reading vmcores (little-endian only).

Pure `struct`, no pyelftools. As in pyelftools' ELFStructs, the ELF class is
picked once and every layout is derived from it: `layout_for(ELFCLASS64)`
returns an `ElfLayout` whose `struct.Struct` objects are built once and cached.

Notes use the same 4-byte layout in ELF32 and ELF64 cores, because the kernel
writes them as arrays of 32-bit words (append_elf_note in kernel/vmcore_info.c,
kernel/crash_core.c before 6.9).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from functools import cache

EM_386 = 3
EM_X86_64 = 62
ELFCLASS32 = 1
ELFCLASS64 = 2
ET_CORE = 4
PT_LOAD = 1
PT_NOTE = 4
PF_X = 1
PF_W = 2
PF_R = 4
NT_PRSTATUS = 1

ELFMAG = b"\x7fELF"
ELFDATA2LSB = 1
EV_CURRENT = 1
EI_NIDENT = 16
NOTE_HEADER_SIZE = 12  # Elf32_Nhdr and Elf64_Nhdr are both 3 x u32

# e_ident byte positions (System V gABI, "ELF Identification").
EI_CLASS, EI_DATA = 4, 5


class ElfFormatError(ValueError):
    """Malformed ELF data; `offset` is where in the buffer/file the problem is."""

    def __init__(self, offset: int, message: str) -> None:
        super().__init__(f"offset {offset:#x}: {message}")
        self.offset = offset
        self.message = message


@dataclass(frozen=True)
class Ehdr:
    """An ELF header (Elf32_Ehdr / Elf64_Ehdr) plus the class it was read as."""

    e_ident: bytes
    e_type: int
    e_machine: int
    e_version: int
    e_entry: int
    e_phoff: int
    e_shoff: int
    e_flags: int
    e_ehsize: int
    e_phentsize: int
    e_phnum: int
    e_shentsize: int
    e_shnum: int
    e_shstrndx: int
    elfclass: int


@dataclass(frozen=True)
class Phdr:
    """A program header; field names as in Elf64_Phdr, whatever the class."""

    p_type: int
    p_flags: int
    p_offset: int
    p_vaddr: int
    p_paddr: int
    p_filesz: int
    p_memsz: int
    p_align: int


_EHDR_FIELDS = tuple(f.name for f in fields(Ehdr) if f.name != "elfclass")
# Elf32_Phdr puts p_flags second to last, Elf64_Phdr second (for alignment of
# the 64-bit fields); see elf(5) or glibc elf.h.
_PHDR_ORDER = {
    ELFCLASS32: ("p_type", "p_offset", "p_vaddr", "p_paddr", "p_filesz", "p_memsz",
                 "p_flags", "p_align"),
    ELFCLASS64: ("p_type", "p_flags", "p_offset", "p_vaddr", "p_paddr", "p_filesz",
                 "p_memsz", "p_align"),
}
# Addr/Off/Xword are 4 bytes in ELF32 and 8 in ELF64; Half is 2, Word is 4.
_EHDR_FMT = {ELFCLASS32: "<16sHHIIIIIHHHHHH", ELFCLASS64: "<16sHHIQQQIHHHHHH"}
_PHDR_FMT = {ELFCLASS32: "<IIIIIIII", ELFCLASS64: "<IIQQQQQQ"}


class ElfLayout:
    """Packs and unpacks the ELF header and program headers of one ELF class."""

    def __init__(self, elfclass: int) -> None:
        if elfclass not in _EHDR_FMT:
            raise ValueError(f"unknown ELF class {elfclass}")
        self.elfclass = elfclass
        self._ehdr = struct.Struct(_EHDR_FMT[elfclass])
        self._phdr = struct.Struct(_PHDR_FMT[elfclass])
        self._phdr_order = _PHDR_ORDER[elfclass]
        self.ehdr_size: int = self._ehdr.size
        self.phdr_size: int = self._phdr.size

    def ident(self) -> bytes:
        """e_ident: magic, class, little-endian, EV_CURRENT, OSABI SYSV, ABI 0."""
        return ELFMAG + bytes([self.elfclass, ELFDATA2LSB, EV_CURRENT, 0]).ljust(12, b"\0")

    def pack_ehdr(self, e_machine: int, e_phnum: int, e_phoff: int | None = None) -> bytes:
        """An ET_CORE header as kexec-tools writes it (no sections, entry 0).

        See kexec/crashdump-elf.c FUNC(): e_shoff, e_shentsize, e_shnum and
        e_shstrndx are 0 and e_phoff follows the header.
        """
        phoff = self.ehdr_size if e_phoff is None else e_phoff
        values = (self.ident(), ET_CORE, e_machine, EV_CURRENT, 0, phoff, 0, 0,
                  self.ehdr_size, self.phdr_size, e_phnum, 0, 0, 0)
        return self._pack(self._ehdr, values, "ELF header")

    def pack_phdr(self, ph: Phdr) -> bytes:
        """One program header in this class's field order."""
        values = tuple(getattr(ph, name) for name in self._phdr_order)
        return self._pack(self._phdr, values, "program header")

    def unpack_ehdr(self, data: bytes, offset: int = 0) -> Ehdr:
        """Decode the header at `offset` without validating it (see read_ehdr)."""
        values = self._unpack(self._ehdr, data, offset, "ELF header")
        return Ehdr(**dict(zip(_EHDR_FIELDS, values)), elfclass=self.elfclass)

    def unpack_phdr(self, data: bytes, offset: int = 0) -> Phdr:
        """Decode one program header at `offset`."""
        values = self._unpack(self._phdr, data, offset, "program header")
        return Phdr(**dict(zip(self._phdr_order, values)))

    def _pack(self, st: struct.Struct, values: tuple, what: str) -> bytes:
        """struct.pack, with out-of-range fields reported as ValueError."""
        try:
            return st.pack(*values)
        except struct.error as exc:
            bits = 32 if self.elfclass == ELFCLASS32 else 64
            raise ValueError(f"{what} does not fit ELF{bits}: {exc}: {values[1:]}") from None

    @staticmethod
    def _unpack(st: struct.Struct, data: bytes, offset: int, what: str) -> tuple:
        """struct.unpack_from, with short data reported as ElfFormatError."""
        if offset < 0 or len(data) - offset < st.size:
            have = max(0, len(data) - offset)
            raise ElfFormatError(offset, f"{what} truncated: need {st.size} bytes, have {have}")
        return st.unpack_from(data, offset)


@cache
def layout_for(elfclass: int) -> ElfLayout:
    """The (cached) layout for ELFCLASS32 or ELFCLASS64."""
    return ElfLayout(elfclass)


def read_ehdr(data: bytes) -> Ehdr:
    """Validate e_ident (magic, class, LSB data) and decode the ELF header."""
    if len(data) < EI_NIDENT:
        raise ElfFormatError(0, f"ELF header truncated: need e_ident (16 bytes), have {len(data)}")
    if data[:4] != ELFMAG:
        raise ElfFormatError(0, f"not an ELF file (magic {data[:4].hex(' ')})")
    elfclass, encoding = data[EI_CLASS], data[EI_DATA]
    if elfclass not in (ELFCLASS32, ELFCLASS64):
        raise ElfFormatError(EI_CLASS, f"bad EI_CLASS {elfclass}")
    if encoding != ELFDATA2LSB:
        raise ElfFormatError(EI_DATA, f"unsupported EI_DATA {encoding} (only little-endian)")
    return layout_for(elfclass).unpack_ehdr(data)


def _round4(n: int) -> int:
    """Round up to the 4-byte note alignment (the kernel's DIV_ROUND_UP by Elf_Word)."""
    return (n + 3) & ~3


_NHDR = struct.Struct("<III")  # n_namesz, n_descsz, n_type
FINAL_NOTE: bytes = bytes(NOTE_HEADER_SIZE)  # final_note(): an all-zero Elf_Nhdr


def pack_note(name: bytes, ntype: int, desc: bytes) -> bytes:
    """One note as append_elf_note() writes it (kernel/vmcore_info.c).

    `name` is given without its NUL; n_namesz counts the NUL (strlen + 1), and
    name and desc are each zero-padded to 4 bytes.
    """
    if b"\0" in name:
        raise ValueError(f"note name {name!r} must not contain NUL")
    namez = name + b"\0"
    header = _NHDR.pack(len(namez), len(desc), ntype)
    return header + namez.ljust(_round4(len(namez)), b"\0") + desc.ljust(_round4(len(desc)), b"\0")


@dataclass(frozen=True)
class Note:
    """A decoded note; `offset` is where its 12-byte header starts."""

    offset: int
    name: bytes
    ntype: int
    desc: bytes


def _note_size(namesz: int, descsz: int) -> int:
    """Bytes a note occupies (update_note_header_size_elf64, fs/proc/vmcore.c)."""
    return NOTE_HEADER_SIZE + _round4(namesz) + _round4(descsz)


def iter_notes(buf: bytes, base_offset: int = 0, stop_at_empty: bool = True) -> Iterator[Note]:
    """Decode the notes in `buf`, a PT_NOTE's data starting at file offset `base_offset`.

    Stops at the end of `buf`, or (like /proc/vmcore's walk) at a note whose
    n_namesz is 0. Up to 11 trailing zero bytes are taken as padding. Sizes are
    checked before slicing, so a huge n_descsz never allocates anything.
    """
    pos = 0
    while pos < len(buf):
        left = len(buf) - pos
        if left < NOTE_HEADER_SIZE:
            if not any(buf[pos:]):
                return
            raise ElfFormatError(base_offset + pos,
                                 f"note header truncated: need 12 bytes, {left} left")
        namesz, descsz, ntype = _NHDR.unpack_from(buf, pos)
        if namesz == 0 and stop_at_empty:
            return
        size = _note_size(namesz, descsz)
        if size > left:
            raise ElfFormatError(
                base_offset + pos,
                f"note (namesz {namesz}, descsz {descsz}, {size} bytes) runs past the end "
                f"of its segment at {base_offset + len(buf):#x}")
        name_at = pos + NOTE_HEADER_SIZE
        desc_at = name_at + _round4(namesz)
        name = bytes(buf[name_at:name_at + namesz]).rstrip(b"\0")
        yield Note(base_offset + pos, name, ntype, bytes(buf[desc_at:desc_at + descsz]))
        pos += size


def notes_real_size(buf: bytes) -> int:
    """Size of the notes up to the first n_namesz == 0, like /proc/vmcore.

    Mirrors update_note_header_size_elf64() in fs/proc/vmcore.c (the walk that
    sets a PT_NOTE's real size; get_note_number_and_size_elf64 then only sums
    them): a note that would exceed the buffer is dropped ("Exceeded p_memsz,
    dropping PT_NOTE entry") and the size so far is returned.
    """
    real = 0
    while len(buf) - real >= NOTE_HEADER_SIZE:
        namesz, descsz, _ = _NHDR.unpack_from(buf, real)
        size = _note_size(namesz, descsz)
        if namesz == 0 or real + size > len(buf):
            break
        real += size
    return real


@dataclass(frozen=True)
class PrstatusLayout:
    """Where pr_pid and pr_reg sit in one architecture's struct elf_prstatus."""

    arch: str
    size: int
    pid_offset: int
    reg_offset: int
    reg_names: tuple[str, ...]
    word: int


PRSTATUS: dict[str, PrstatusLayout] = {
    # binutils bfd/elf64-x86-64.c elf_x86_64_grok_prstatus (descsz 336, pid +32, pr_reg +112, 216 bytes);
    # order: struct user_regs_struct, arch/x86/include/asm/user_64.h; names as in
    # glibc <sys/user.h> struct user_regs_struct, which are also gdb's.
    "x86_64": PrstatusLayout(
        "x86_64", 336, 32, 112,
        ("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx",
         "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base",
         "gs_base", "ds", "es", "fs", "gs"),
        8),
    # binutils bfd/elf32-i386.c elf_i386_grok_prstatus (case 144 Linux/i386: pid +24, pr_reg +72, 68 bytes);
    # order: struct user_regs_struct in arch/x86/include/asm/user_32.h; names are
    # gdb's i386 register names (glibc's, without its x prefix on segment registers).
    "i386": PrstatusLayout(
        "i386", 144, 24, 72,
        ("ebx", "ecx", "edx", "esi", "edi", "ebp", "eax", "ds", "es", "fs", "gs", "orig_eax", "eip",
         "cs", "eflags", "esp", "ss"),
        4),
}


@cache
def _regs_struct(arch: str) -> struct.Struct:
    """The struct for pr_reg of `arch` (u32 or u64 words)."""
    lay = PRSTATUS[arch]
    return struct.Struct("<" + ("Q" if lay.word == 8 else "I") * len(lay.reg_names))


_PID = struct.Struct("<i")  # pid_t


def _prstatus_layout(arch: str) -> PrstatusLayout:
    """PRSTATUS[arch], with a clear error for other architectures."""
    try:
        return PRSTATUS[arch]
    except KeyError:
        raise ValueError(f"no prstatus layout for arch {arch!r} (have {sorted(PRSTATUS)})") from None


def pack_prstatus(arch: str, pid: int, regs: Mapping[str, int]) -> bytes:
    """An elf_prstatus as crash_save_cpu() fills it: zeroed, then pr_pid and pr_reg.

    (crash_save_cpu in kernel/kexec_core.c, kernel/crash_core.c since 6.9:
    memset 0, pr_pid = current->pid, elf_core_copy_regs.) Missing registers
    are 0; unknown names or values that do not fit raise ValueError.
    """
    lay = _prstatus_layout(arch)
    unknown = set(regs) - set(lay.reg_names)
    if unknown:
        raise ValueError(f"unknown {arch} registers: {sorted(unknown)}")
    buf = bytearray(lay.size)
    try:
        _PID.pack_into(buf, lay.pid_offset, pid)
        _regs_struct(arch).pack_into(buf, lay.reg_offset, *(regs.get(n, 0) for n in lay.reg_names))
    except struct.error as exc:
        raise ValueError(f"{arch} prstatus value out of range: {exc}") from None
    return bytes(buf)


def unpack_prstatus(arch: str, desc: bytes) -> tuple[int, dict[str, int]]:
    """(pr_pid, {register: value}) from an NT_PRSTATUS descriptor.

    A short descriptor raises ElfFormatError whose offset is where it ends.
    """
    lay = _prstatus_layout(arch)
    if len(desc) < lay.size:
        raise ElfFormatError(len(desc), f"{arch} prstatus needs {lay.size} bytes, have {len(desc)}")
    (pid,) = _PID.unpack_from(desc, lay.pid_offset)
    values = _regs_struct(arch).unpack_from(desc, lay.reg_offset)
    return pid, dict(zip(lay.reg_names, values))
