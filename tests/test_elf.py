"""kdumpsim.elf: layouts, notes and prstatus, checked against readelf, eu-readelf,
pyelftools and a real Linux 6.1 /proc/vmcore."""

from __future__ import annotations

import re
import struct
import subprocess
from pathlib import Path

import pytest
from conftest import require_tool
from elftools.elf.elffile import ELFFile

from kdumpsim.formats import elf
from kdumpsim.formats.elf import ELFCLASS32, ELFCLASS64, ElfFormatError, Phdr

DATA = Path(__file__).parent / "data"
SAMPLE = DATA / "real-6.1-head8k.vmcore"
SAMPLE_SUMMARY = DATA / "real-6.1-head8k.summary.txt"
# Names in the summary are glibc/gdb style, as ours.
SUMMARY_NAMES: dict[str, str] = {}


def sample_notes() -> list[elf.Note]:
    """The notes of the real sample's (single, merged) PT_NOTE."""
    data = SAMPLE.read_bytes()
    ehdr = elf.read_ehdr(data)
    note = elf.layout_for(ehdr.elfclass).unpack_phdr(data, ehdr.e_phoff)
    assert note.p_type == elf.PT_NOTE
    return list(elf.iter_notes(data[note.p_offset:note.p_offset + note.p_filesz], note.p_offset))


def summary_prstatus() -> list[tuple[int, dict[str, int]]]:
    """(pid, registers) per CPU as decoded in the sample's summary.txt."""
    text = SAMPLE_SUMMARY.read_text()
    pids = [int(m) for m in re.findall(r"pr_pid=(\d+)", text)]
    reg_lines = [line for line in text.splitlines() if line.strip().startswith("r15=")]
    regs = [{SUMMARY_NAMES.get(k, k): int(v, 16) for k, v in re.findall(r"(\w+)=([0-9a-f]+)", line)}
            for line in reg_lines]
    return list(zip(pids, regs))


# -- ELF header and program headers ----------------------------------------

@pytest.mark.parametrize("elfclass, ehdr_size, phdr_size", [(ELFCLASS32, 52, 32), (ELFCLASS64, 64, 56)])
def test_layout_sizes(elfclass: int, ehdr_size: int, phdr_size: int) -> None:
    layout = elf.layout_for(elfclass)
    assert (layout.ehdr_size, layout.phdr_size) == (ehdr_size, phdr_size)
    assert elf.layout_for(elfclass) is layout  # cached


@pytest.mark.parametrize("elfclass, machine", [(ELFCLASS32, elf.EM_386), (ELFCLASS64, elf.EM_X86_64)])
def test_ehdr_round_trip(elfclass: int, machine: int) -> None:
    layout = elf.layout_for(elfclass)
    raw = layout.pack_ehdr(machine, 7)
    assert len(raw) == layout.ehdr_size
    assert raw[:8] == b"\x7fELF" + bytes([elfclass, 1, 1, 0])
    ehdr = elf.read_ehdr(raw)
    assert (ehdr.elfclass, ehdr.e_type, ehdr.e_machine, ehdr.e_version) == (elfclass, 4, machine, 1)
    assert (ehdr.e_phoff, ehdr.e_phnum, ehdr.e_phentsize) == (layout.ehdr_size, 7, layout.phdr_size)
    assert (ehdr.e_entry, ehdr.e_shoff, ehdr.e_shnum, ehdr.e_shentsize, ehdr.e_shstrndx) == (0,) * 5
    assert ehdr.e_ehsize == layout.ehdr_size
    assert layout.unpack_ehdr(b"pad" + raw, 3) == ehdr
    assert layout.pack_ehdr(machine, 1, e_phoff=0x1000)[:len(raw)] != raw


@pytest.mark.parametrize("elfclass", [ELFCLASS32, ELFCLASS64])
def test_phdr_round_trip_and_field_order(elfclass: int) -> None:
    layout = elf.layout_for(elfclass)
    ph = Phdr(p_type=1, p_flags=7, p_offset=0x11, p_vaddr=0x22, p_paddr=0x33, p_filesz=0x44,
              p_memsz=0x55, p_align=0x66)
    raw = layout.pack_phdr(ph)
    assert len(raw) == layout.phdr_size
    assert layout.unpack_phdr(raw) == ph
    assert layout.unpack_phdr(b"\0" * 5 + raw, 5) == ph
    # p_flags is the 2nd field of Elf64_Phdr but the 7th (offset 24) of Elf32_Phdr.
    flags_at = 4 if elfclass == ELFCLASS64 else 24
    assert struct.unpack_from("<I", raw, flags_at) == (7,)


def test_phdr_too_big_for_elf32() -> None:
    ph = Phdr(elf.PT_LOAD, 7, 0, 0xFFFF888000000000, 0, 0, 0, 0)
    with pytest.raises(ValueError, match="ELF32"):
        elf.layout_for(ELFCLASS32).pack_phdr(ph)
    assert elf.layout_for(ELFCLASS64).unpack_phdr(elf.layout_for(ELFCLASS64).pack_phdr(ph)) == ph


@pytest.mark.parametrize("data, offset, fragment", [
    (b"", 0, "ELF header truncated"),
    (b"\x7fELF", 0, "ELF header truncated"),
    (b"MZ\x90\x00" + bytes(60), 0, "not an ELF file"),
    (b"\x7fELF\x03\x01" + bytes(58), 4, "bad EI_CLASS 3"),
    (b"\x7fELF\x02\x02" + bytes(58), 5, "unsupported EI_DATA 2"),
    (b"\x7fELF\x02\x01" + bytes(40), 0, "ELF header truncated: need 64 bytes, have 46"),
])
def test_read_ehdr_errors(data: bytes, offset: int, fragment: str) -> None:
    with pytest.raises(ElfFormatError) as info:
        elf.read_ehdr(data)
    assert info.value.offset == offset
    assert fragment in str(info.value)
    assert str(info.value).startswith(f"offset {offset:#x}: ")


def test_unpack_phdr_short() -> None:
    with pytest.raises(ElfFormatError, match=r"^offset 0x40: program header truncated"):
        elf.layout_for(ELFCLASS64).unpack_phdr(bytes(100), 0x40)


def test_elf_format_error_str() -> None:
    err = ElfFormatError(0x40, "bad e_phentsize 12")
    assert (str(err), err.offset, err.message) == ("offset 0x40: bad e_phentsize 12", 0x40,
                                                    "bad e_phentsize 12")
    assert isinstance(err, ValueError)


# -- notes -----------------------------------------------------------------

def test_pack_note_layout() -> None:
    raw = elf.pack_note(b"CORE", elf.NT_PRSTATUS, b"\x01\x02\x03")
    assert raw == struct.pack("<III", 5, 3, 1) + b"CORE\0\0\0\0" + b"\x01\x02\x03\0"
    assert elf.FINAL_NOTE == bytes(12)
    with pytest.raises(ValueError):
        elf.pack_note(b"CO\0RE", 1, b"")


def test_iter_notes_round_trip_and_stop_at_empty() -> None:
    buf = (elf.pack_note(b"CORE", 1, b"x" * 336) + elf.pack_note(b"VMCOREINFO", 0, b"A=1\n")
           + elf.FINAL_NOTE + elf.pack_note(b"AFTER", 9, b""))
    notes = list(elf.iter_notes(buf, 0x1000))
    assert [(n.offset, n.name, n.ntype, len(n.desc)) for n in notes] == [
        (0x1000, b"CORE", 1, 336), (0x1000 + 356, b"VMCOREINFO", 0, 4)]
    every = list(elf.iter_notes(buf, 0, stop_at_empty=False))
    assert [n.name for n in every] == [b"CORE", b"VMCOREINFO", b"", b"AFTER"]
    assert elf.notes_real_size(buf) == 356 + 12 + 12 + 4  # up to the final note
    # Trailing zero padding shorter than a header ends the walk quietly.
    assert len(list(elf.iter_notes(buf[:380] + bytes(8)))) == 2


def test_iter_notes_past_end_names_the_note() -> None:
    good = elf.pack_note(b"CORE", 1, bytes(8))
    bad = struct.pack("<III", 5, 0xFFFFFFFF, 1) + b"CORE\0\0\0\0"
    with pytest.raises(ElfFormatError, match="runs past the end") as info:
        list(elf.iter_notes(good + bad, 0x2000))
    assert info.value.offset == 0x2000 + len(good)
    with pytest.raises(ElfFormatError, match="note header truncated"):
        list(elf.iter_notes(good + b"\x05\0\0\0", 0))


def test_notes_real_size_stops_without_raising() -> None:
    one = elf.pack_note(b"CORE", 1, bytes(336))
    assert elf.notes_real_size(one + one[:100]) == len(one)  # partial second note dropped
    assert elf.notes_real_size(one + bytes(5)) == len(one)
    assert elf.notes_real_size(b"") == 0
    assert elf.notes_real_size(elf.FINAL_NOTE + one) == 0


# -- prstatus --------------------------------------------------------------

def test_prstatus_layouts() -> None:
    x64, x86 = elf.PRSTATUS["x86_64"], elf.PRSTATUS["i386"]
    assert (x64.size, x64.pid_offset, x64.reg_offset, len(x64.reg_names), x64.word) == (336, 32, 112, 27, 8)
    assert (x86.size, x86.pid_offset, x86.reg_offset, len(x86.reg_names), x86.word) == (144, 24, 72, 17, 4)
    # pr_reg ends before pr_fpvalid (an int) and the struct's tail padding.
    assert x64.reg_offset + 27 * 8 + 4 <= x64.size and x86.reg_offset + 17 * 4 + 4 == x86.size


@pytest.mark.parametrize("arch", ["x86_64", "i386"])
def test_prstatus_round_trip(arch: str) -> None:
    layout = elf.PRSTATUS[arch]
    regs = {name: (i + 1) * 0x01010101 for i, name in enumerate(layout.reg_names)}
    desc = elf.pack_prstatus(arch, 1234, regs)
    assert len(desc) == layout.size
    assert elf.unpack_prstatus(arch, desc) == (1234, regs)
    assert struct.unpack_from("<i", desc, layout.pid_offset) == (1234,)
    ip = "rip" if arch == "x86_64" else "eip"
    ip_at = layout.reg_offset + layout.reg_names.index(ip) * layout.word
    assert int.from_bytes(desc[ip_at:ip_at + layout.word], "little") == regs[ip]


def test_prstatus_missing_and_unknown_registers() -> None:
    pid, regs = elf.unpack_prstatus("x86_64", elf.pack_prstatus("x86_64", 7, {"rip": 5}))
    assert pid == 7 and regs["rip"] == 5 and sum(regs.values()) == 5
    with pytest.raises(ValueError, match="eip"):
        elf.pack_prstatus("x86_64", 1, {"eip": 1})
    with pytest.raises(ValueError):
        elf.pack_prstatus("arm64", 1, {})
    with pytest.raises(ValueError):
        elf.pack_prstatus("i386", 1, {"eip": 1 << 32})
    with pytest.raises(ElfFormatError, match="336"):
        elf.unpack_prstatus("x86_64", bytes(200))


def test_prstatus_of_real_sample_matches_summary() -> None:
    notes = [n for n in sample_notes() if (n.name, n.ntype) == (b"CORE", elf.NT_PRSTATUS)]
    decoded = [elf.unpack_prstatus("x86_64", n.desc) for n in notes]
    expected = summary_prstatus()
    assert [pid for pid, _ in decoded] == [1, 0]
    assert decoded == expected
    assert decoded[0][1]["rip"] == 0xFFFFFFFF98B741BA
    assert decoded[0][1]["eflags"] == 0x46
    assert decoded[0][1]["rsp"] == 0xFF53EAB240013B80
    # crash_save_cpu zeroes the rest, so packing reproduces the kernel's bytes.
    assert [elf.pack_prstatus("x86_64", pid, regs) for pid, regs in decoded] == [n.desc for n in notes]


def test_real_sample_notes_and_sizes() -> None:
    notes = sample_notes()
    assert [(n.offset, n.name, n.ntype, len(n.desc)) for n in notes] == [
        (0x1000, b"CORE", 1, 336), (0x1164, b"CORE", 1, 336), (0x12C8, b"VMCOREINFO", 0, 3301)]
    data = SAMPLE.read_bytes()
    assert elf.notes_real_size(data[0x1000:0x1000 + 0xFC8]) == 0xFC8


def test_pyelftools_agrees_on_real_sample() -> None:
    data = SAMPLE.read_bytes()
    ehdr = elf.read_ehdr(data)
    layout = elf.layout_for(ehdr.elfclass)
    with SAMPLE.open("rb") as f:
        ef = ELFFile(f)
        assert ef.elfclass == 64 and ef.little_endian
        for field in ("e_phoff", "e_phnum", "e_phentsize", "e_ehsize", "e_shoff", "e_entry"):
            assert ef[field] == getattr(ehdr, field), field
        assert (ef["e_type"], ef["e_machine"]) == ("ET_CORE", "EM_X86_64")
        segments = list(ef.iter_segments())
        for i, seg in enumerate(segments):
            ours = layout.unpack_phdr(data, ehdr.e_phoff + i * ehdr.e_phentsize)
            for field in ("p_flags", "p_offset", "p_vaddr", "p_paddr", "p_filesz", "p_memsz", "p_align"):
                assert seg[field] == getattr(ours, field), (i, field)
            assert seg["p_type"] == {1: "PT_LOAD", 4: "PT_NOTE"}[ours.p_type]
        theirs = [(n["n_offset"], n["n_name"].encode(), n["n_descsz"], bytes(n["n_descdata"]))
                  for n in segments[0].iter_notes()]
    assert theirs == [(n.offset, n.name, len(n.desc), n.desc) for n in sample_notes()]


# -- external tools --------------------------------------------------------

def distinct_regs(arch: str) -> dict[str, int]:
    """A different value in every register (segment registers fit 16 bits)."""
    names = elf.PRSTATUS[arch].reg_names
    return {n: (i + 1) * (0x11 if n in SEGMENT_REGS else 0x01010101) for i, n in enumerate(names)}


SEGMENT_REGS = {"cs", "ss", "ds", "es", "fs", "gs"}


def build_core(elfclass: int, machine: int, arch: str) -> tuple[bytes, list[Phdr]]:
    """A small core: PT_NOTE (one CPU + VMCOREINFO + final note), two PT_LOADs."""
    layout = elf.layout_for(elfclass)
    prstatus = elf.pack_prstatus(arch, 42, distinct_regs(arch))
    notes = (elf.pack_note(b"CORE", elf.NT_PRSTATUS, prstatus)
             + elf.pack_note(b"VMCOREINFO", 0, b"OSRELEASE=2.6.13\nPAGESIZE=4096\n") + elf.FINAL_NOTE)
    note_at = layout.ehdr_size + 3 * layout.phdr_size
    load_at = (note_at + len(notes) + 0xFFF) & ~0xFFF
    rwx = elf.PF_R | elf.PF_W | elf.PF_X
    phdrs = [Phdr(elf.PT_NOTE, 0, note_at, 0, 0x9F000, len(notes), len(notes), 0),
             Phdr(elf.PT_LOAD, rwx, load_at, 0xC0000000, 0, 0x1000, 0x1000, 0),
             Phdr(elf.PT_LOAD, rwx, load_at + 0x1000, 0xC0100000, 0x100000, 0x2000, 0x2000, 0)]
    head = layout.pack_ehdr(machine, len(phdrs)) + b"".join(map(layout.pack_phdr, phdrs)) + notes
    return head.ljust(load_at, b"\0") + bytes(0x3000), phdrs


CORES = [(ELFCLASS64, elf.EM_X86_64, "x86_64"), (ELFCLASS32, elf.EM_386, "i386")]


def run_tool(*argv: str) -> str:
    """Run a tool; it must exit 0 and print nothing on stderr (readelf warns but exits 0)."""
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr
    return proc.stdout


@pytest.mark.parametrize("elfclass, machine, arch", CORES)
def test_readelf_reads_our_program_headers(tmp_path: Path, elfclass: int, machine: int, arch: str) -> None:
    readelf = require_tool("readelf")
    raw, phdrs = build_core(elfclass, machine, arch)
    core = tmp_path / "core"
    core.write_bytes(raw)
    out = run_tool(readelf, "-h", "-l", "-W", str(core))
    assert "CORE (Core file)" in out
    rows = re.findall(r"^\s+(NOTE|LOAD)\s+(0x[0-9a-f]+)\s+(0x[0-9a-f]+)\s+(0x[0-9a-f]+)\s+"
                      r"(0x[0-9a-f]+)\s+(0x[0-9a-f]+)\s+([RWE ]{3})\s+(0x[0-9a-f]+|0)$", out, re.M)
    assert len(rows) == len(phdrs)
    for row, ph in zip(rows, phdrs):
        kind, *nums, flg, align = row
        assert kind == {elf.PT_NOTE: "NOTE", elf.PT_LOAD: "LOAD"}[ph.p_type]
        assert [int(x, 16) for x in nums] == [ph.p_offset, ph.p_vaddr, ph.p_paddr, ph.p_filesz, ph.p_memsz]
        assert flg == ("RWE" if ph.p_flags == 7 else "   ") and int(align, 16) == ph.p_align
    notes = run_tool(readelf, "-n", "-W", str(core))
    assert re.search(r"CORE\s+0x[0-9a-f]*%x\s+NT_PRSTATUS" % elf.PRSTATUS[arch].size, notes)
    assert "VMCOREINFO" in notes


# elfutils' register names (backends/x86_64_corenote.c, i386_corenote.c) -> ours.
EU_NAMES = {
    "x86_64": {"rflags": "eflags", "fs.base": "fs_base", "gs.base": "gs_base"},
    "i386": {},
}


def eu_registers(text: str, arch: str) -> dict[str, int]:
    """Registers of the first PRSTATUS note in `eu-readelf -n` output, our names."""
    layout = elf.PRSTATUS[arch]
    block = re.split(r"PRSTATUS|VMCOREINFO", text)[1]
    regs = {}
    for name, value in re.findall(r"([a-z0-9_.]+):\s+(-?0x[0-9a-f]+|-?\d+)", block):
        ours = EU_NAMES[arch].get(name, name)
        if ours in layout.reg_names:
            regs[ours] = int(value, 0) & ((1 << (8 * layout.word)) - 1)  # eu prints some signed
    return regs


@pytest.mark.parametrize("elfclass, machine, arch", CORES)
def test_eu_readelf_decodes_our_prstatus(tmp_path: Path, elfclass: int, machine: int, arch: str) -> None:
    eu_readelf = require_tool("eu-readelf")
    core = tmp_path / "core"
    core.write_bytes(build_core(elfclass, machine, arch)[0])
    out = run_tool(eu_readelf, "-n", str(core))
    assert re.search(r"\bpid: 42,", out)
    assert eu_registers(out, arch) == distinct_regs(arch)


def test_eu_readelf_agrees_on_real_sample() -> None:
    eu_readelf = require_tool("eu-readelf")
    out = run_tool(eu_readelf, "-n", str(SAMPLE))
    assert re.findall(r"\bpid: (\d+),", out) == ["1", "0"]
    assert re.findall(r"rip:\s+(0x[0-9a-f]+)", out) == ["0xffffffff98b741ba", "0xffffffff994592eb"]
    assert eu_registers(out, "x86_64") == summary_prstatus()[0][1]
