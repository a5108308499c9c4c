"""Summarise any ELF vmcore (ours or a copy of a real /proc/vmcore) with pyelftools.

pyelftools (ELFFile, iter_segments, note iteration) does the decoding; this
module first checks what pyelftools trusts blindly (header sizes, table
bounds, note sizes), so hostile files give an InspectError naming the file
offset instead of a traceback, a hang or a huge allocation. Every read goes
through a stream that cannot read past the end of the file.
"""

from __future__ import annotations

import itertools
import os
import stat
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO

from elftools.common.exceptions import ELFError
from elftools.common.utils import struct_parse
from elftools.construct import ConstructError
from elftools.elf.elffile import ELFFile
from elftools.elf.notes import iter_notes as pyelftools_iter_notes

from kdumpsim.errors import InspectError
from kdumpsim.formats import elf

MiB = 1 << 20
# Cap on the note bytes read from all PT_NOTEs together. A real merged note
# is a few hundred bytes per CPU plus about 4 KiB of VMCOREINFO, so 64 MiB
# is generous; it stops e.g. 65534 PT_NOTEs that each cover a huge file.
MAX_NOTE_BYTES = 64 * MiB
# Cap on the number of notes: one NT_PRSTATUS per CPU plus VMCOREINFO, and x86
# NR_CPUS is at most 8192 (NR_CPUS_RANGE_END, arch/x86/Kconfig), so 65536
# leaves room while keeping a file of tiny notes from taking minutes.
MAX_NOTES = 1 << 16
# VMCOREINFO text parsed and printed: the kernel's note holds at most
# VMCOREINFO_BYTES, one page (include/linux/vmcore_info.h; makedumpfile reads
# 4096), so 64 KiB is generous and a crafted 20 MB one costs nothing
# (docs/SOURCES.md "inspect bounds").
MAX_VMCOREINFO_BYTES = 64 * 1024
# Errors pyelftools (and the construct library under it) raises on bad input.
_PYELFTOOLS_ERRORS = (ELFError, ConstructError, struct.error, ValueError, IndexError,
                      KeyError, UnicodeError, RecursionError)
# Offsets of e_phentsize and e_phnum inside Elf32_Ehdr / Elf64_Ehdr (elf(5)).
_PHENTSIZE_AT = {elf.ELFCLASS32: 0x2A, elf.ELFCLASS64: 0x36}
_PHNUM_AT = {elf.ELFCLASS32: 0x2C, elf.ELFCLASS64: 0x38}
_E_TYPE_AT = 0x10
PN_XNUM = 0xFFFF  # e_phnum escape for "count is in section 0" (elf(5))
_ARCH_BY_MACHINE = {elf.EM_X86_64: "x86_64", elf.EM_386: "i386"}
_E_TYPE_NAMES = {0: "ET_NONE", 1: "ET_REL", 2: "ET_EXEC", 3: "ET_DYN", 4: "ET_CORE"}


class _BoundedStream:
    """Read-only file view for pyelftools that never reads past `limit`.

    pyelftools calls stream.read(n) with n taken from the file (e.g. a note's
    n_descsz); CPython allocates n bytes before reading, so n is capped here.
    """

    def __init__(self, f: BinaryIO, size: int) -> None:
        self._f = f
        self.size = size
        self.limit = size
        self._pos = 0

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        """Move the position; the underlying file is only touched by read()."""
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self.size}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def tell(self) -> int:
        """Current position."""
        return self._pos

    def read(self, n: int | None = -1) -> bytes:
        """Up to n bytes, never past `limit`."""
        avail = max(0, self.limit - self._pos)
        n = avail if n is None or n < 0 else min(n, avail)
        if n == 0:
            return b""
        self._f.seek(self._pos)
        data = self._f.read(n)
        self._pos += len(data)
        return data

    def pread(self, offset: int, n: int) -> bytes:
        """Read n bytes at offset (bounded like read())."""
        self.seek(offset)
        return self.read(n)

    @contextmanager
    def window(self, end: int) -> Iterator[None]:
        """Temporarily pretend the file ends at `end` (for note decoding)."""
        saved, self.limit = self.limit, min(end, self.size)
        try:
            yield
        finally:
            self.limit = saved


def inspect_vmcore(path: str | os.PathLike) -> dict[str, Any]:
    """Summarise the ELF vmcore at `path` as a JSON-serialisable dict."""
    name = os.fsdecode(path)
    try:
        # O_NONBLOCK so that a FIFO does not block open(); fstat then rejects it.
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise InspectError(name, f"cannot open: {exc.strerror or exc}") from None
    try:
        size = _regular_file_size(name, os.fstat(fd))
        f = os.fdopen(fd, "rb", buffering=0)
    except BaseException:
        os.close(fd)
        raise
    with f:
        try:
            return _Inspector(name, _BoundedStream(f, size)).run()
        except OSError as exc:
            raise InspectError(name, f"read error: {exc.strerror or exc}") from None


def _regular_file_size(name: str, st: os.stat_result) -> int:
    """Size of a non-empty regular file (/proc/vmcore is one), else InspectError."""
    if stat.S_ISDIR(st.st_mode):
        raise InspectError(name, "is a directory, not a vmcore file")
    if not stat.S_ISREG(st.st_mode):
        raise InspectError(name, "not a regular file")
    if st.st_size == 0:
        raise InspectError(name, "empty file (0 bytes), not an ELF vmcore")
    return st.st_size


class _Inspector:
    """One pass over one file; collects warnings on the way."""

    def __init__(self, name: str, stream: _BoundedStream) -> None:
        self.name = name
        self.stream = stream
        self.size = stream.size
        self.warnings: list[str] = []
        self.notes_left = MAX_NOTES

    def fail(self, reason: str, offset: int | None = None) -> InspectError:
        """An InspectError for this file (to raise)."""
        return InspectError(self.name, reason, offset)

    def run(self) -> dict[str, Any]:
        """Header checks, then pyelftools for segments and notes."""
        ehdr = self.check_header()
        elffile = self.open_elffile()
        phdrs = [_phdr_dict(i, h) for i, h in enumerate(self.segment_headers(elffile, ehdr))]
        notes, cpus, vmcoreinfo = self.decode_notes(elffile, ehdr, phdrs)
        return {
            "file": self.name,
            "size": self.size,
            "elf": _ehdr_dict(ehdr, elffile),
            "program_headers": [{k: v for k, v in p.items() if k != "_kind"} for p in phdrs],
            "notes": notes,
            "cpus": cpus,
            "vmcoreinfo": vmcoreinfo,
            "loads": self.check_loads(phdrs),
            "warnings": self.warnings,
        }

    # -- header and program headers --------------------------------------

    def check_header(self) -> elf.Ehdr:
        """Validate what pyelftools would trust: ident, type, phdr table bounds.

        Follows the sanity checks of parse_crash_elf64_headers() in
        fs/proc/vmcore.c, but reports odd-but-readable values as warnings.
        """
        head = self.stream.pread(0, elf.layout_for(elf.ELFCLASS64).ehdr_size)
        try:
            ehdr = elf.read_ehdr(head)
        except elf.ElfFormatError as exc:
            raise self.fail(exc.message, exc.offset) from None
        if ehdr.e_type != elf.ET_CORE:
            kind = _E_TYPE_NAMES.get(ehdr.e_type, "unknown")
            raise self.fail(f"not a core file: e_type {ehdr.e_type} ({kind}), expected "
                            f"ET_CORE ({elf.ET_CORE})", _E_TYPE_AT)
        self.check_phdr_table(ehdr)
        layout = elf.layout_for(ehdr.elfclass)
        if ehdr.e_ehsize != layout.ehdr_size:
            self.warnings.append(f"e_ehsize {ehdr.e_ehsize}, expected {layout.ehdr_size}")
        if ehdr.e_version != 1 or ehdr.e_ident[6] != 1:
            self.warnings.append("ELF version is not EV_CURRENT (1)")
        if ehdr.e_shoff or ehdr.e_shnum:
            self.warnings.append(f"section header table at {ehdr.e_shoff:#x} ignored "
                                 "(vmcores have none)")
        return ehdr

    def check_phdr_table(self, ehdr: elf.Ehdr) -> None:
        """e_phnum, e_phentsize and the table's extent must make sense."""
        layout = elf.layout_for(ehdr.elfclass)
        if ehdr.e_phnum == PN_XNUM:
            raise self.fail("e_phnum is PN_XNUM (0xffff): extended program header "
                            "numbering is not used by vmcores", _PHNUM_AT[ehdr.elfclass])
        if ehdr.e_phnum == 0:
            self.warnings.append("e_phnum is 0: no program headers")
            return
        if ehdr.e_phentsize != layout.phdr_size:
            raise self.fail(f"bad e_phentsize {ehdr.e_phentsize} (ELF{_bits(ehdr)} program "
                            f"headers are {layout.phdr_size} bytes)",
                            _PHENTSIZE_AT[ehdr.elfclass])
        end = ehdr.e_phoff + ehdr.e_phnum * ehdr.e_phentsize
        if end > self.size:
            raise self.fail(f"program header table ({ehdr.e_phnum} x {ehdr.e_phentsize} "
                            f"bytes) runs past end of file (file is {self.size} bytes)",
                            ehdr.e_phoff)

    def open_elffile(self) -> ELFFile:
        """pyelftools' view of the (already checked) file."""
        try:
            return ELFFile(self.stream)  # type: ignore[arg-type]
        except _PYELFTOOLS_ERRORS as exc:
            raise self.fail(f"pyelftools cannot parse the ELF header: {exc}", 0) from None

    def segment_headers(self, elffile: ELFFile, ehdr: elf.Ehdr) -> list[Any]:
        """Program headers via pyelftools.

        iter_segments() builds a DynamicSegment for PT_DYNAMIC, which walks the
        section table; a vmcore has none, so when e_shoff is set (hostile or
        odd file) the headers are parsed with pyelftools' Elf_Phdr struct only.
        """
        try:
            if ehdr.e_shoff == 0:
                return [seg.header for seg in elffile.iter_segments()]
            return [struct_parse(elffile.structs.Elf_Phdr, self.stream,  # type: ignore[call-overload]
                                 ehdr.e_phoff + i * ehdr.e_phentsize)
                    for i in range(ehdr.e_phnum)]
        except _PYELFTOOLS_ERRORS as exc:
            raise self.fail(f"pyelftools cannot parse the program headers: {exc}",
                            ehdr.e_phoff) from None

    def check_loads(self, phdrs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """PT_LOAD map; truncation and file overlaps are warnings, not errors."""
        loads = []
        for p in phdrs:
            if p["_kind"] != "PT_LOAD":
                continue
            end = p["offset"] + p["filesz"]
            if end > self.size:
                # Real dumps get cut short (disk full, dd interrupted); keep going.
                self.warnings.append(
                    f"PT_LOAD {p['index']} data runs past end of file (truncated dump?): "
                    f"offset {p['offset']:#x} + filesz {p['filesz']:#x} > file size {self.size:#x}")
            loads.append({"index": p["index"], "paddr_start": p["paddr"],
                          "paddr_end": p["paddr"] + p["memsz"], "vaddr": p["vaddr"],
                          "offset": p["offset"], "size": p["memsz"]})
        self.warn_overlaps([p for p in phdrs if p["_kind"] == "PT_LOAD" and p["filesz"]])
        return loads

    def warn_overlaps(self, loads: list[dict[str, Any]]) -> None:
        """Warn about PT_LOADs whose file ranges overlap (sorted sweep)."""
        prev: dict[str, Any] | None = None
        for p in sorted(loads, key=lambda p: (p["offset"], p["index"])):
            if prev is not None and p["offset"] < prev["offset"] + prev["filesz"]:
                self.warnings.append(
                    f"PT_LOAD {prev['index']} and PT_LOAD {p['index']} overlap in the file "
                    f"at offset {p['offset']:#x}")
            if prev is None or p["offset"] + p["filesz"] > prev["offset"] + prev["filesz"]:
                prev = p

    # -- notes ------------------------------------------------------------

    def decode_notes(self, elffile: ELFFile, ehdr: elf.Ehdr, phdrs: list[dict[str, Any]]
                     ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, str] | None]:
        """Notes of every PT_NOTE, the per-CPU registers and VMCOREINFO."""
        notes: list[dict[str, Any]] = []
        budget = MAX_NOTE_BYTES
        first: dict[tuple[int, int], int] = {}     # (offset, size) -> the PT_NOTE that had it first
        repeats: list[tuple[int, int]] = []
        for p in phdrs:
            if p["_kind"] == "PT_NOTE":
                key = (p["offset"], p["filesz"])
                if key in first:             # an alias of an earlier PT_NOTE: the same notes, decoded once
                    repeats.append((p["index"], first[key]))
                    continue
                first[key] = p["index"]
                data = self.note_data(p, budget)
                budget -= len(data)
                notes.extend(self.segment_notes(elffile, p, data))
        if repeats:
            self.warnings.append(f"{len(repeats)} PT_NOTE headers repeat the offset and size of an earlier one "
                                 f"(PT_NOTE {repeats[0][0]} = PT_NOTE {repeats[0][1]}"
                                 f"{', ...' if len(repeats) > 1 else ''}): their notes are decoded and listed once")
        if not any(p["_kind"] == "PT_NOTE" for p in phdrs):
            self.warnings.append("no PT_NOTE segment: no CPU registers or VMCOREINFO")
        cpus = self.decode_cpus(ehdr, notes)
        vmcoreinfo = self.decode_vmcoreinfo(notes)
        for n in notes:
            del n["_desc"]
        return notes, cpus, vmcoreinfo

    def note_data(self, p: dict[str, Any], budget: int) -> bytes:
        """A PT_NOTE's bytes; unlike PT_LOAD data they must all be in the file."""
        start, end = p["offset"], p["offset"] + p["filesz"]
        if end > self.size:
            raise self.fail(f"PT_NOTE {p['index']} data runs past end of file (ends at "
                            f"{end:#x}, file is {self.size} bytes)", start)
        if p["filesz"] > budget:
            raise self.fail(f"PT_NOTE segments hold more than {MAX_NOTE_BYTES} bytes of "
                            "notes; refusing", start)
        return self.stream.pread(start, p["filesz"])

    def check_notes(self, p: dict[str, Any], data: bytes) -> list[elf.Note]:
        """Walk the notes with kdumpsim.elf: sizes in bounds, names NUL-terminated.

        Like /proc/vmcore (update_note_header_size_elf64, fs/proc/vmcore.c) the
        walk stops at the first note with n_namesz == 0.
        """
        try:
            notes = list(itertools.islice(elf.iter_notes(data, p["offset"]), self.notes_left + 1))
        except elf.ElfFormatError as exc:
            raise self.fail(f"PT_NOTE {p['index']}: {exc.message}", exc.offset) from None
        if len(notes) > self.notes_left:
            raise self.fail(f"more than {MAX_NOTES} notes; refusing", notes[-1].offset)
        self.notes_left -= len(notes)
        for note in notes:
            at = note.offset - p["offset"] + elf.NOTE_HEADER_SIZE
            namesz = int.from_bytes(data[at - 12:at - 8], "little")
            # pyelftools reads the name as a C string from the 4-byte padded field.
            if b"\0" not in data[at:at + (namesz + 3) // 4 * 4]:
                raise self.fail(f"PT_NOTE {p['index']}: note name {note.name[:16]!r} is not "
                                f"NUL-terminated within n_namesz {namesz}", note.offset)
        return notes

    def segment_notes(self, elffile: ELFFile, p: dict[str, Any], data: bytes
                      ) -> list[dict[str, Any]]:
        """Decode one checked PT_NOTE with pyelftools, up to its real size."""
        checked = self.check_notes(p, data)
        start, real = p["offset"], elf.notes_real_size(data)
        out: list[dict[str, Any]] = []
        with self.stream.window(start + real):
            found = pyelftools_iter_notes(elffile, start, real)
            for own in checked:
                try:
                    theirs = next(found)
                except (StopIteration, *_PYELFTOOLS_ERRORS) as exc:
                    raise self.fail(f"pyelftools cannot decode this note: {exc!r}",
                                    own.offset) from None
                if theirs["n_offset"] != own.offset or bytes(theirs["n_descdata"]) != own.desc:
                    raise self.fail("pyelftools and kdumpsim.elf disagree about this note",
                                    own.offset)
                out.append(_note_dict(own, theirs))
        return out

    def decode_cpus(self, ehdr: elf.Ehdr, notes: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One entry per CORE/NT_PRSTATUS note, registers decoded on x86."""
        arch = _ARCH_BY_MACHINE.get(ehdr.e_machine)
        cpus: list[dict[str, Any]] = []
        for n in notes:
            if n["name"] != "CORE" or n["type"] != elf.NT_PRSTATUS:
                continue
            cpu: dict[str, Any] = {"index": len(cpus), "pid": None, "registers": {}}
            cpus.append(cpu)
            if arch is None:
                continue
            layout = elf.PRSTATUS[arch]
            if n["descsz"] != layout.size:
                self.warnings.append(f"note at {n['offset']:#x}: NT_PRSTATUS descsz "
                                     f"{n['descsz']} is not {layout.size} ({arch}); "
                                     "registers not decoded")
                continue
            pid, regs = elf.unpack_prstatus(arch, n["_desc"])
            n["pid"] = cpu["pid"] = pid
            n["registers"] = regs
            cpu["registers"] = dict(regs)
        if cpus and arch is None:
            self.warnings.append(f"e_machine {ehdr.e_machine}: no prstatus layout, "
                                 "registers not decoded")
        return cpus

    def decode_vmcoreinfo(self, notes: list[dict[str, Any]]) -> dict[str, str] | None:
        """KEY=VALUE lines of the VMCOREINFO note (kernel/vmcore_info.c)."""
        found = [n for n in notes if n["name"] == "VMCOREINFO"]
        if not found:
            return None
        if len(found) > 1:
            self.warnings.append(f"{len(found)} VMCOREINFO notes; using the first")
        desc = found[0]["_desc"]
        end = desc.find(b"\0", 0, MAX_VMCOREINFO_BYTES + 1)
        text = desc[:end if end >= 0 else MAX_VMCOREINFO_BYTES + 1]
        if len(text) > MAX_VMCOREINFO_BYTES:
            # Cut at the last whole line within the bound.
            text = text[:text.rfind(b"\n", 0, MAX_VMCOREINFO_BYTES) + 1]
            self.warnings.append(f"VMCOREINFO note is {len(desc)} bytes, far over the kernel's one page "
                                 f"(VMCOREINFO_BYTES): only the first {len(text)} bytes are parsed and shown")
        return parse_vmcoreinfo(text.decode("utf-8", "replace"))


def parse_vmcoreinfo(text: str) -> dict[str, str]:
    """The VMCOREINFO note's KEY=VALUE lines (kernel/vmcore_info.c) as a mapping: the one parser."""
    info: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            info[key] = value
    return info


def _bits(ehdr: elf.Ehdr) -> int:
    """32 or 64."""
    return 32 if ehdr.elfclass == elf.ELFCLASS32 else 64


def _flags_str(flags: int) -> str:
    """readelf's Flg column: 'RWE', 'R E', '   '."""
    return "".join(c if flags & bit else " "
                   for c, bit in (("R", elf.PF_R), ("W", elf.PF_W), ("E", elf.PF_X)))


def _phdr_dict(index: int, h: Any) -> dict[str, Any]:
    """One pyelftools Elf_Phdr container as a plain dict (_kind is internal)."""
    ptype = h["p_type"]
    kind = ptype if isinstance(ptype, str) else f"{ptype:#x}"
    return {"index": index, "type": kind.removeprefix("PT_"), "offset": h["p_offset"],
            "vaddr": h["p_vaddr"], "paddr": h["p_paddr"], "filesz": h["p_filesz"],
            "memsz": h["p_memsz"], "flags": _flags_str(h["p_flags"]), "align": h["p_align"],
            "_kind": kind}


def _ehdr_dict(ehdr: elf.Ehdr, elffile: ELFFile) -> dict[str, Any]:
    """ELF header fields; names of class/machine from pyelftools."""
    machine = elffile["e_machine"]
    return {"class": f"ELF{_bits(ehdr)}", "data": "little-endian",
            "type": ehdr.e_type, "type_name": _E_TYPE_NAMES.get(ehdr.e_type, "unknown"),
            "machine": ehdr.e_machine,
            "machine_name": machine if isinstance(machine, str) else f"{machine:#x}",
            "version": ehdr.e_version, "osabi": ehdr.e_ident[7], "entry": ehdr.e_entry,
            "phoff": ehdr.e_phoff, "phentsize": ehdr.e_phentsize, "phnum": ehdr.e_phnum,
            "shoff": ehdr.e_shoff, "shnum": ehdr.e_shnum, "ehsize": ehdr.e_ehsize,
            "flags": ehdr.e_flags}


def _note_dict(own: elf.Note, theirs: Any) -> dict[str, Any]:
    """Merge our checked note with pyelftools' decoding of it (_desc is internal)."""
    name = theirs["n_name"] or ""
    ptype = theirs["n_type"]
    if name == "VMCOREINFO":
        type_name = "VMCOREINFO"
    elif name in ("CORE", "LINUX") and isinstance(ptype, str):
        type_name = ptype
    else:
        type_name = f"{own.ntype:#x}"
    return {"offset": theirs["n_offset"], "name": name, "type": own.ntype,
            "type_name": type_name, "descsz": theirs["n_descsz"],
            "_desc": bytes(theirs["n_descdata"])}


def _hex_regs(regs: dict[str, int], per_line: int = 4) -> list[str]:
    """Registers as 'name=0x...' lines, a few per line."""
    items = [f"{k:>7}={v:#018x}" for k, v in regs.items()]
    return ["  ".join(items[i:i + per_line]) for i in range(0, len(items), per_line)]


def format_summary(summary: dict[str, Any]) -> str:
    """readelf-like text for a summary from inspect_vmcore()."""
    e = summary["elf"]
    lines = [f"File: {summary['file']} ({summary['size']} bytes)",
             "ELF Header:",
             f"  Class: {e['class']}  Data: {e['data']}  Type: {e['type_name']} ({e['type']})  "
             f"Machine: {e['machine_name']} ({e['machine']})",
             f"  Program headers: {e['phnum']} x {e['phentsize']} bytes at offset {e['phoff']:#x}",
             "", "Program Headers:",
             f"  {'Idx':>3} {'Type':<6} {'Offset':>18} {'VirtAddr':>18} {'PhysAddr':>18} "
             f"{'FileSiz':>18} {'MemSiz':>18} Flg Align"]
    for p in summary["program_headers"]:
        lines.append(f"  {p['index']:>3} {p['type']:<6} {p['offset']:#018x} {p['vaddr']:#018x} "
                     f"{p['paddr']:#018x} {p['filesz']:#018x} {p['memsz']:#018x} "
                     f"{p['flags']} {p['align']:#x}")
    lines += ["", "Notes:"]
    for n in summary["notes"]:
        lines.append(f"  at {n['offset']:#x}: {n['name']:<10} {n['type_name']:<12} "
                     f"descsz {n['descsz']:#x}")
        if "pid" in n:
            lines.append(f"    pid {n['pid']}")
            lines += [f"    {line}" for line in _hex_regs(n["registers"])]
    if summary["vmcoreinfo"] is not None:
        lines += ["", "VMCOREINFO:"]
        lines += [f"  {k}={v}" for k, v in summary["vmcoreinfo"].items()]
    lines += ["", "PT_LOAD map (physical):"]
    for ld in summary["loads"]:
        lines.append(f"  [{ld['paddr_start']:#014x}-{ld['paddr_end']:#014x}) "
                     f"{ld['size'] / MiB:10.2f} MiB  vaddr {ld['vaddr']:#018x}  "
                     f"file offset {ld['offset']:#x}")
    total = sum(ld["size"] for ld in summary["loads"])
    lines.append(f"  total {total / MiB:.2f} MiB in {len(summary['loads'])} PT_LOADs")
    if summary["warnings"]:
        lines += ["", "Warnings:"] + [f"  {w}" for w in summary["warnings"]]
    return "\n".join(lines) + "\n"
