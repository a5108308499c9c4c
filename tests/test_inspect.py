"""kdumpsim.inspect on the real Linux 6.1 sample, on synthetic cores and on hostile input."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kdumpsim.errors import InspectError
from kdumpsim.formats import elf
from kdumpsim.formats.elf import ELFCLASS32, ELFCLASS64, Phdr
from kdumpsim.formats.reader import format_summary, inspect_vmcore

SAMPLE = Path(__file__).parent / "data" / "real-6.1-head8k.vmcore"
EM_AARCH64 = 183
RWX = elf.PF_R | elf.PF_W | elf.PF_X
NOTE_AT = 0x1000  # like the real sample: merged PT_NOTE on the first page boundary


def make_core(elfclass: int = ELFCLASS64, machine: int = elf.EM_X86_64,
              arch: str | None = "x86_64", pids: tuple[int, ...] = (1, 0),
              loads: tuple[tuple[int, int], ...] = ((0x100000, 0x1000), (0x200000, 0x2000)),
              final_note: bool = False) -> bytes:
    """A small vmcore shaped like /proc/vmcore: notes at 0x1000, PT_LOADs from 0x2000."""
    layout = elf.layout_for(elfclass)
    notes = b""
    for pid in pids:
        sp = "rsp" if arch == "x86_64" else "esp"
        desc = elf.pack_prstatus(arch, pid, {sp: 0x5000 + pid}) if arch else bytes(200)
        notes += elf.pack_note(b"CORE", elf.NT_PRSTATUS, desc)
    notes += elf.pack_note(b"VMCOREINFO", 0, b"OSRELEASE=6.1.0-sim\nPAGESIZE=4096\nCRASHTIME=1\n")
    notes += elf.FINAL_NOTE if final_note else b""
    phdrs = [Phdr(elf.PT_NOTE, 0, NOTE_AT, 0, 0, len(notes), len(notes), 0)]
    offset = 0x2000
    for paddr, size in loads:
        phdrs.append(Phdr(elf.PT_LOAD, RWX, offset, 0xC0000000 + paddr, paddr, size, size, 0))
        offset += size
    head = layout.pack_ehdr(machine, len(phdrs)) + b"".join(map(layout.pack_phdr, phdrs))
    return head.ljust(NOTE_AT, b"\0") + notes.ljust(0x1000, b"\0") + bytes(offset - 0x2000)


def patch(raw: bytes, offset: int, fmt: str, value: int) -> bytes:
    """raw with one field overwritten."""
    out = bytearray(raw)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


# Byte offset and format of each program header field (elf(5): Elf32_Phdr has
# p_flags near the end, Elf64_Phdr second), written out independently of elf.py.
PHDR_FIELDS = {
    ELFCLASS64: {"p_type": (0, "<I"), "p_flags": (4, "<I"), "p_offset": (8, "<Q"),
                 "p_vaddr": (16, "<Q"), "p_paddr": (24, "<Q"), "p_filesz": (32, "<Q"),
                 "p_memsz": (40, "<Q"), "p_align": (48, "<Q")},
    ELFCLASS32: {"p_type": (0, "<I"), "p_offset": (4, "<I"), "p_vaddr": (8, "<I"),
                 "p_paddr": (12, "<I"), "p_filesz": (16, "<I"), "p_memsz": (20, "<I"),
                 "p_flags": (24, "<I"), "p_align": (28, "<I")},
}


def phdr_field(index: int, name: str, elfclass: int = ELFCLASS64) -> tuple[int, str]:
    """(file offset, struct format) of a program header field of a core from make_core()."""
    at, fmt = PHDR_FIELDS[elfclass][name]
    layout = elf.layout_for(elfclass)
    return layout.ehdr_size + index * layout.phdr_size + at, fmt


CORE = make_core()
P_OFFSET_0, P_FILESZ_0 = phdr_field(0, "p_offset"), phdr_field(0, "p_filesz")


def write(tmp_path: Path, raw: bytes, name: str = "test.vmcore") -> Path:
    """Write raw to a file in tmp_path."""
    path = tmp_path / name
    path.write_bytes(raw)
    return path


# -- the real Linux 6.1 dump -------------------------------------------------

def test_real_sample_summary() -> None:
    s = inspect_vmcore(SAMPLE)
    json.dumps(s)
    assert s["size"] == 8192 and s["file"] == str(SAMPLE)
    assert s["elf"]["class"] == "ELF64" and s["elf"]["machine"] == elf.EM_X86_64
    assert (s["elf"]["phoff"], s["elf"]["phnum"], s["elf"]["type"]) == (64, 5, elf.ET_CORE)
    assert [p["type"] for p in s["program_headers"]] == ["NOTE"] + ["LOAD"] * 4
    assert [p["flags"] for p in s["program_headers"]] == ["   "] + ["RWE"] * 4
    assert [(c["index"], c["pid"]) for c in s["cpus"]] == [(0, 1), (1, 0)]
    assert [c["registers"]["rip"] for c in s["cpus"]] == [0xFFFFFFFF98B741BA, 0xFFFFFFFF994592EB]
    assert s["cpus"][0]["registers"]["eflags"] == 0x46
    assert s["cpus"][0]["registers"]["rsp"] == 0xFF53EAB240013B80
    assert [(n["offset"], n["name"], n["type_name"], n["descsz"]) for n in s["notes"]] == [
        (0x1000, "CORE", "NT_PRSTATUS", 336), (0x1164, "CORE", "NT_PRSTATUS", 336),
        (0x12C8, "VMCOREINFO", "VMCOREINFO", 3301)]
    info = s["vmcoreinfo"]
    assert info["OSRELEASE"] == "6.1.0-56-amd64" and info["CRASHTIME"] == "1795695492"
    assert info["PAGESIZE"] == "4096" and info["NUMBER(pgtable_l5_enabled)"] == "1"
    assert len(info) == 110
    assert [(ld["paddr_start"], ld["size"]) for ld in s["loads"]] == [
        (0x2E600000, 0x3430000), (0x1000, 0x9EC00), (0x100000, 0x1DF00000), (0x2E000000, 0x11FDD000)]
    assert len(s["warnings"]) == 4
    assert all(f"PT_LOAD {i} data runs past end of file (truncated dump?)" in w
               for i, w in zip(range(1, 5), s["warnings"]))


def test_format_summary_of_real_sample() -> None:
    text = format_summary(inspect_vmcore(SAMPLE))
    for fragment in ("ELF64", "EM_X86_64", "NT_PRSTATUS", "pid 1", "pid 0",
                     "rip=0xffffffff98b741ba", "flags=0x0000000000000046",
                     "OSRELEASE=6.1.0-56-amd64", "CRASHTIME=1795695492", "479.00 MiB",
                     "total 819.67 MiB", "truncated dump?"):
        assert fragment in text, fragment


# -- synthetic cores -----------------------------------------------------------

def test_synthetic_core_is_clean(tmp_path: Path) -> None:
    s = inspect_vmcore(write(tmp_path, CORE))
    assert s["warnings"] == []
    assert [(c["pid"], c["registers"]["rsp"]) for c in s["cpus"]] == [(1, 0x5001), (0, 0x5000)]
    assert s["vmcoreinfo"] == {"OSRELEASE": "6.1.0-sim", "PAGESIZE": "4096", "CRASHTIME": "1"}
    assert [(ld["paddr_start"], ld["paddr_end"], ld["offset"]) for ld in s["loads"]] == [
        (0x100000, 0x101000, 0x2000), (0x200000, 0x202000, 0x3000)]


def test_final_note_and_padding_end_the_walk(tmp_path: Path) -> None:
    s = inspect_vmcore(write(tmp_path, make_core(final_note=True)))
    assert [n["name"] for n in s["notes"]] == ["CORE", "CORE", "VMCOREINFO"]


def test_elf32_i386_core(tmp_path: Path) -> None:
    raw = make_core(ELFCLASS32, elf.EM_386, "i386", pids=(7,))
    s = inspect_vmcore(write(tmp_path, raw))
    assert s["elf"]["class"] == "ELF32" and s["warnings"] == []
    assert s["cpus"] == [{"index": 0, "pid": 7, "registers": {**dict.fromkeys(
        elf.PRSTATUS["i386"].reg_names, 0), "esp": 0x5007}}]


def test_non_x86_notes_are_generic(tmp_path: Path) -> None:
    s = inspect_vmcore(write(tmp_path, make_core(machine=EM_AARCH64, arch=None)))
    assert [(c["pid"], c["registers"]) for c in s["cpus"]] == [(None, {}), (None, {})]
    assert all("registers" not in n for n in s["notes"])
    assert any("e_machine 183" in w for w in s["warnings"])
    assert s["vmcoreinfo"]["OSRELEASE"] == "6.1.0-sim"


def test_prstatus_of_wrong_size_is_a_warning(tmp_path: Path) -> None:
    s = inspect_vmcore(write(tmp_path, make_core(arch=None)))  # x86_64 with 200-byte prstatus
    assert s["cpus"][0]["pid"] is None
    assert any("NT_PRSTATUS descsz 200 is not 336" in w for w in s["warnings"])


@pytest.mark.parametrize("field, value, fragment", [
    ("p_filesz", 0x100000, "PT_LOAD 1 data runs past end of file (truncated dump?)"),
    ("p_offset", 2**64 - 1, "PT_LOAD 1 data runs past end of file (truncated dump?)"),
    ("p_offset", 0x2800, "PT_LOAD 1 and PT_LOAD 2 overlap in the file at offset 0x3000"),
])
def test_load_problems_are_warnings(tmp_path: Path, field: str, value: int, fragment: str) -> None:
    raw = patch(CORE, *phdr_field(1, field), value)
    s = inspect_vmcore(write(tmp_path, raw))
    assert any(fragment in w for w in s["warnings"]), s["warnings"]
    assert len(s["cpus"]) == 2


def test_no_program_headers_is_a_warning(tmp_path: Path) -> None:
    s = inspect_vmcore(write(tmp_path, patch(CORE, 0x38, "<H", 0)))
    assert s["cpus"] == [] and s["vmcoreinfo"] is None
    assert any("e_phnum is 0" in w for w in s["warnings"])


def test_section_table_is_ignored(tmp_path: Path) -> None:
    # e_shoff set and a PT_DYNAMIC: pyelftools would walk the (garbage) sections.
    raw = patch(patch(CORE, 0x28, "<Q", 0x100), *phdr_field(2, "p_type"), 2)
    raw = patch(raw, 0x3C, "<H", 0xFFFF)  # e_shnum
    s = inspect_vmcore(write(tmp_path, raw))
    assert s["program_headers"][2]["type"] == "DYNAMIC"
    assert any("section header table" in w for w in s["warnings"])


# -- hostile input ---------------------------------------------------------------

Maker = Callable[[Path], Path]


def raw_case(raw: bytes) -> Maker:
    """A case whose file holds raw."""
    return lambda tmp: write(tmp, raw)


def fifo_case(tmp: Path) -> Path:
    """A named pipe (opening it for reading must not block)."""
    path = tmp / "pipe"
    os.mkfifo(path)
    return path


def note_field(index: int, field: str) -> int:
    """File offset of n_namesz/n_descsz of note `index` in CORE."""
    at = NOTE_AT + index * (12 + 8 + 336)
    return at + {"namesz": 0, "descsz": 4}[field]


HOSTILE: dict[str, tuple[Maker, str]] = {
    "empty": (raw_case(b""), "empty file (0 bytes)"),
    "directory": (lambda tmp: tmp, "is a directory"),
    "missing": (lambda tmp: tmp / "nope", "cannot open"),
    "fifo": (fifo_case, "not a regular file"),
    "not-elf": (raw_case(b"hello world\n" * 10), "offset 0x0: not an ELF file"),
    "short-ident": (raw_case(b"\x7fELF\x02"), "offset 0x0: ELF header truncated"),
    "bad-class": (raw_case(patch(CORE, 4, "<B", 3)), "offset 0x4: bad EI_CLASS 3"),
    "big-endian": (raw_case(patch(CORE, 5, "<B", 2)), "offset 0x5: unsupported EI_DATA 2"),
    "not-core": (raw_case(patch(CORE, 0x10, "<H", 2)),
                 "offset 0x10: not a core file: e_type 2 (ET_EXEC), expected ET_CORE (4)"),
    "truncated-header": (raw_case(CORE[:40]), "offset 0x0: ELF header truncated: need 64 bytes, have 40"),
    "truncated-phdrs": (raw_case(CORE[:100]), "offset 0x40: program header table (3 x 56 bytes) "
                                              "runs past end of file (file is 100 bytes)"),
    "pn-xnum": (raw_case(patch(CORE, 0x38, "<H", 0xFFFF)), "offset 0x38: e_phnum is PN_XNUM (0xffff)"),
    "huge-phnum": (raw_case(patch(CORE, 0x38, "<H", 1000)),
                   "offset 0x40: program header table (1000 x 56 bytes) runs past end of file"),
    "huge-phoff": (raw_case(patch(CORE, 0x20, "<Q", 2**64 - 1)),
                   "offset 0xffffffffffffffff: program header table"),
    "bad-phentsize": (raw_case(patch(CORE, 0x36, "<H", 12)), "offset 0x36: bad e_phentsize 12"),
    "bad-phentsize-32": (raw_case(patch(make_core(ELFCLASS32, elf.EM_386, "i386"), 0x2A, "<H", 56)),
                         "offset 0x2a: bad e_phentsize 56 (ELF32 program headers are 32 bytes)"),
    "note-past-eof": (raw_case(patch(CORE, *P_FILESZ_0, 0x100000)),
                      "offset 0x1000: PT_NOTE 0 data runs past end of file"),
    "note-absurd-offset": (raw_case(patch(CORE, *P_OFFSET_0, 2**63)),
                           "offset 0x8000000000000000: PT_NOTE 0 data runs past end of file"),
    "descsz-huge": (raw_case(patch(CORE, note_field(0, "descsz"), "<I", 0xFFFFFFFF)),
                    "offset 0x1000: PT_NOTE 0: note (namesz 5, descsz 4294967295"),
    "namesz-past-segment": (raw_case(patch(CORE, note_field(1, "namesz"), "<I", 0x10000)),
                            "offset 0x1164: PT_NOTE 0: note (namesz 65536"),
    "note-header-cut": (raw_case(patch(CORE, *P_FILESZ_0, 356 + 5)),
                        "offset 0x1164: PT_NOTE 0: note header truncated"),
    "name-without-nul": (raw_case(CORE.replace(b"CORE\0\0\0\0", b"COREXXXX", 1)),
                         "offset 0x1000: PT_NOTE 0: note name b'COREX' is not NUL-terminated"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_input(tmp_path: Path, case: str) -> None:
    maker, fragment = HOSTILE[case]
    path = maker(tmp_path)
    with pytest.raises(InspectError) as info:
        inspect_vmcore(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert fragment in message, message
    if "offset 0x" in fragment:
        assert info.value.offset == int(fragment.split()[1].rstrip(":"), 16)


def test_descsz_note_mentions_running_past(tmp_path: Path) -> None:
    raw = patch(CORE, note_field(2, "descsz"), "<I", 0xFFFFFFF0)
    with pytest.raises(InspectError, match=r"offset 0x12c8: .*runs past the end"):
        inspect_vmcore(write(tmp_path, raw))


def test_note_bytes_are_capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("kdumpsim.formats.reader.MAX_NOTE_BYTES", 500)
    with pytest.raises(InspectError, match=r"offset 0x1000: PT_NOTE segments hold more than 500 bytes"):
        inspect_vmcore(write(tmp_path, CORE))


def test_note_count_is_capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("kdumpsim.formats.reader.MAX_NOTES", 2)
    with pytest.raises(InspectError, match=r"offset 0x12c8: more than 2 notes"):
        inspect_vmcore(write(tmp_path, CORE))


def test_huge_sparse_file_is_not_read_whole(tmp_path: Path) -> None:
    # A 4 GiB sparse file whose PT_NOTE claims 3 GiB: refused before reading it.
    path = write(tmp_path, patch(CORE, *P_FILESZ_0, 3 << 30))
    os.truncate(path, 4 << 30)
    with pytest.raises(InspectError, match="PT_NOTE segments hold more than"):
        inspect_vmcore(path)


# -- fuzzing -----------------------------------------------------------------

def interesting_fields(raw: bytes) -> list[tuple[int, str]]:
    """(offset, format) of e_phoff/e_phentsize/e_phnum, phdr sizes and note sizes."""
    ehdr = elf.read_ehdr(raw)
    layout = elf.layout_for(ehdr.elfclass)
    word = "<Q" if ehdr.elfclass == ELFCLASS64 else "<I"
    phoff_at, phentsize_at = (0x20, 0x36) if ehdr.elfclass == ELFCLASS64 else (0x1C, 0x2A)
    fields = [(phoff_at, word), (phentsize_at, "<H"), (phentsize_at + 2, "<H")]
    for i in range(ehdr.e_phnum):
        fields += [phdr_field(i, f, ehdr.elfclass) for f in ("p_type", "p_offset", "p_filesz")]
        ph = layout.unpack_phdr(raw, ehdr.e_phoff + i * layout.phdr_size)
        if ph.p_type == elf.PT_NOTE:
            for note in elf.iter_notes(raw[ph.p_offset:ph.p_offset + ph.p_filesz], ph.p_offset):
                fields += [(note.offset, "<I"), (note.offset + 4, "<I"), (note.offset + 8, "<I")]
    return fields


BASES = [SAMPLE.read_bytes(), CORE, make_core(ELFCLASS32, elf.EM_386, "i386")]
FIELDS = [interesting_fields(b) for b in BASES]


@st.composite
def mutated_cores(draw: st.DrawFn) -> bytes:
    """A base core with a few field rewrites, byte flips and maybe a truncation."""
    which = draw(st.integers(0, len(BASES) - 1))
    raw = bytearray(BASES[which])
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["field", "flip", "truncate"]))
        if action == "field":
            offset, fmt = draw(st.sampled_from(FIELDS[which]))
            bits = 8 * struct.calcsize(fmt)
            value = draw(st.one_of(st.integers(0, 2**bits - 1),
                                   st.sampled_from([0, 1, 12, 0xFFFF, len(raw), len(raw) - 1,
                                                    2**bits - 1, 2**(bits - 1)])))
            if offset + struct.calcsize(fmt) <= len(raw):
                struct.pack_into(fmt, raw, offset, value)
        elif action == "flip":
            index = draw(st.integers(0, min(len(raw), 0x1400) - 1)) if raw else 0
            if raw:
                raw[index] = draw(st.integers(0, 255))
        else:
            del raw[draw(st.integers(0, len(raw))):]
    return bytes(raw)


@settings(max_examples=200, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(raw=mutated_cores())
def test_mutated_cores_never_crash(tmp_path_factory: pytest.TempPathFactory, raw: bytes) -> None:
    path = tmp_path_factory.getbasetemp() / "fuzz.vmcore"
    path.write_bytes(raw)
    try:
        summary = inspect_vmcore(path)
    except InspectError as exc:
        assert str(exc).startswith(f"{path}: ")
        return
    json.dumps(summary)
    assert isinstance(format_summary(summary), str)


# -- amplification (issue 17 item 27) ------------------------------------------

def aliased_core(headers: int) -> bytes:
    """`headers` PT_NOTE headers that all point at one note segment (2 CPUs + VMCOREINFO)."""
    layout = elf.layout_for(ELFCLASS64)
    notes = b"".join(elf.pack_note(b"CORE", elf.NT_PRSTATUS, elf.pack_prstatus("x86_64", pid, {"rsp": 1}))
                     for pid in (1, 2)) + elf.pack_note(b"VMCOREINFO", 0, b"OSRELEASE=6.1.0-sim\n")
    at = layout.ehdr_size + headers * layout.phdr_size
    phdrs = [Phdr(elf.PT_NOTE, 0, at, 0, 0, len(notes), len(notes), 0)] * headers
    return layout.pack_ehdr(elf.EM_X86_64, headers) + b"".join(map(layout.pack_phdr, phdrs)) + notes


def test_aliased_pt_notes_are_decoded_once(tmp_path: Path) -> None:
    """65534 PT_NOTE headers on one note: it used to be decoded 65534 times (41 s, 1.1 GiB with --json)."""
    import time
    import tracemalloc
    path = write(tmp_path, aliased_core(65534))
    tracemalloc.start()
    t0 = time.monotonic()
    try:
        summary = inspect_vmcore(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.monotonic() - t0 < 60           # 3 s without tracemalloc; 41 s before
    assert peak < 200 * 2**20, peak
    assert len(summary["notes"]) == 3 and len(summary["cpus"]) == 2
    assert summary["vmcoreinfo"] == {"OSRELEASE": "6.1.0-sim"}
    assert len(summary["program_headers"]) == 65534
    warning = [w for w in summary["warnings"] if "repeat" in w]
    assert warning == ["65533 PT_NOTE headers repeat the offset and size of an earlier one (PT_NOTE 1 = PT_NOTE 0, "
                       "...): their notes are decoded and listed once"], summary["warnings"]


def test_a_huge_vmcoreinfo_is_truncated(tmp_path: Path) -> None:
    """A 20 MB VMCOREINFO (the kernel writes at most VMCOREINFO_BYTES, a page) used to take 676 MiB."""
    import tracemalloc

    from kdumpsim.formats.reader import MAX_VMCOREINFO_BYTES
    layout = elf.layout_for(ELFCLASS64)
    text = b"".join(b"KEY%07d=%s\n" % (i, b"v" * 40) for i in range(400_000))      # ~20 MB
    notes = elf.pack_note(b"VMCOREINFO", 0, text)
    at = layout.ehdr_size + layout.phdr_size
    raw = layout.pack_ehdr(elf.EM_X86_64, 1) + layout.pack_phdr(Phdr(elf.PT_NOTE, 0, at, 0, 0, len(notes),
                                                                     len(notes), 0)) + notes
    path = write(tmp_path, raw)
    tracemalloc.start()
    try:
        summary = inspect_vmcore(path)
        text_out = format_summary(summary)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 150 * 2**20, peak
    info = summary["vmcoreinfo"]
    assert "KEY0000000" in info and len(info) < MAX_VMCOREINFO_BYTES // 40
    assert f"VMCOREINFO note is {len(text)} bytes" in " ".join(summary["warnings"])
    assert "only the first" in text_out and len(text_out) < 4 * MAX_VMCOREINFO_BYTES
