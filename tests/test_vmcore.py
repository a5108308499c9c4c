"""Real ELF vmcore bytes that real crash tools open.

Every shipped model (with small memory maps, so the files stay a few hundred
MiB) is simulated with two seeds; each vmcore, /dev/oldmem view and report is
written once per module. Then readelf, eu-readelf, pyelftools, gdb and
libkdumpfile (Debian's python3-libkdumpfile, run under /usr/bin/python3 by
tests/kdumpfile_probe.py) must open the file without complaint and read back
what the simulation says it holds: the registers in the report, the bytes
`dump_bytes` gives for any dumped physical address, and the bytes of the
/dev/oldmem view at each PT_LOAD's source address.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import require_tool
from elftools.elf.elffile import ELFFile

from kdumpsim import defaults as D
from kdumpsim.config.model import load_model
from kdumpsim.crash.run import CrashRun
from kdumpsim.formats import elf
from kdumpsim.formats.vmcore import dump_bytes, write_oldmem, write_vmcore
from kdumpsim.measure import simulate
from kdumpsim.measure.report import build_report, dumps

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
PROBE = Path(__file__).resolve().parent / "kdumpfile_probe.py"
SYSTEM_PYTHON = "/usr/bin/python3"
REAL_SAMPLE = Path(__file__).resolve().parent / "data" / "real-6.1-head8k.vmcore"   # a real 6.1 /proc/vmcore's head
PAGE = D.PAGE_SIZE
RWX = elf.PF_R | elf.PF_W | elf.PF_X
BLOCK = 4 << 20

# Small discontiguous memory maps, shaped like the shipped ones.
# modern: low RAM from 0x1000 (backed up), 95 MiB with the first kernel at
# 16 MiB, a hole, 128 MiB below 4 GiB, 64 MiB above 4 GiB.
MODERN_IOMEM = ('memory.iomem=["00000000-00000fff : reserved", "00001000-0009fbff : System RAM", '
                '"0009fc00-0009ffff : reserved", "000f0000-000fffff : System ROM", '
                '"00100000-05ffffff : System RAM", "06000000-07ffffff : reserved", '
                '"08000000-0fffffff : System RAM", "10000000-fedfffff : PCI Bus", '
                '"100000000-103ffffff : System RAM"]')
# i386: the paper machine's map cut to 128 MiB (crashkernel=32M@16M still fits).
I386_IOMEM = ('memory.iomem=["00000000-0009ffff : System RAM", "000a0000-000bffff : Video RAM area", '
              '"000f0000-000fffff : System ROM", "00100000-07feffff : System RAM", '
              '"07ff0000-07ff2fff : ACPI Non-volatile Storage", "07ff3000-07ffffff : ACPI Tables", '
              '"fec00000-fec00fff : reserved", "fee00000-fee00fff : reserved", '
              '"ffb00000-ffffffff : reserved"]')


@dataclass(frozen=True)
class Case:
    model: str
    seed: int
    overrides: tuple[str, ...]

    @property
    def path(self) -> Path:
        return MODELS / f"{self.model}.yaml"


# A 4M initramfs: unpacked, with a 16M kernel, it fits the capture kernel in 64M (kdumpsim.crash.capturemem).
MODERN = (MODERN_IOMEM, "kexec.crashkernel=64M", "kexec.capture_kernel_init_size=16M", "kexec.initrd_size=4M",
          "cpus.count=6", "cpus.panic_cpu=1",
          "cpus.unresponsive={3: hung}")
MODERN_2 = MODERN[:1] + ("kexec.crashkernel=64M@160M",) + MODERN[2:] + ("cpus.busy_share=1.0",)
KEXEC_LOAD = ("kexec.method=kexec_load",)
CASES = {
    # kexec_file_load (the modern default): the kernel's headers, RAM from 1 MiB, no backup.
    # seed 1: crashkernel placed by the kernel (top of the low 4 GiB); idle CPUs share pid 0.
    "modern-1": Case("modern-x86_64", 1, MODERN),
    # seed 2: crashkernel=X@Y splits a RAM range; every CPU busy, so every pid differs.
    "modern-2": Case("modern-x86_64", 2, MODERN_2),
    # the same two with kexec_load: kexec-tools' headers and its backup region
    "modern-load-1": Case("modern-x86_64", 1, MODERN + KEXEC_LOAD),
    "modern-load-2": Case("modern-x86_64", 2, MODERN_2 + KEXEC_LOAD),
    "i386-2005-1": Case("paper-i386-2005", 1, (I386_IOMEM,)),
    "i386-2005-2": Case("paper-i386-2005", 2, (I386_IOMEM,)),
    "i386-2004-1": Case("paper-i386-2004", 1, (I386_IOMEM, "cpus.unresponsive={2: nmi_lost}")),
    "i386-2004-2": Case("paper-i386-2004", 2, (I386_IOMEM, "cpus.unresponsive={2: nmi_lost}")),
}


@dataclass
class Built:
    case: Case
    run: CrashRun
    report: dict[str, Any]
    vmcore: Path
    oldmem: Path

    @property
    def arch(self) -> str:
        return self.run.machine.arch

    @property
    def modern(self) -> bool:
        return self.run.machine.era == "modern"

    @property
    def file_load(self) -> bool:
        return self.run.image.method == "kexec_file_load"

    def saved_cpus(self) -> list[dict[str, Any]]:
        """Report entries of the CPUs whose note is in the dump, in note order."""
        by_addr = {c["note_addr"]: c for c in self.report["cpus"]}
        return [by_addr[a] for a in self.run.vmcore.note_sources if a in by_addr]


def build(case: Case, out: Path) -> Built:
    run = simulate(load_model(case.path, list(case.overrides)), case.seed)
    assert run.vmcore is not None, (run.outcome, run.vmcore_error)
    out.mkdir(parents=True, exist_ok=True)
    vmcore, oldmem = out / "vmcore", out / "oldmem"
    write_vmcore(run, vmcore)
    write_oldmem(run, oldmem)
    return Built(case, run, build_report(run), vmcore, oldmem)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Built]:
    """Every case, simulated and written once (lazily, when a test first asks for it)."""

    class Lazy(dict):
        def __missing__(self, key: str) -> Built:
            self[key] = build(CASES[key], tmp_path_factory.mktemp(key))
            return self[key]

    return Lazy()


def case_fixture(keys: list[str]):
    """A fixture giving the Built of each case in `keys` (one test per case)."""
    @pytest.fixture(params=keys)
    def fixture(request: pytest.FixtureRequest, built: dict[str, Built]) -> Built:
        return built[request.param]
    return fixture


ALL = sorted(CASES)
b = case_fixture(ALL)
modern = case_fixture([k for k in ALL if CASES[k].model == "modern-x86_64"])
old_era = case_fixture([k for k in ALL if CASES[k].model != "modern-x86_64"])
# the dumps that leave the reservation out (not 2004)
split = case_fixture([k for k in ALL if CASES[k].model != "paper-i386-2004"])
# ... and have a backup PT_LOAD of their own (kexec_load)
backed_up = case_fixture([k for k in ALL if CASES[k].model == "paper-i386-2005" or k.startswith("modern-load")])


def run_tool(*argv: str | os.PathLike, allowed_stderr: str = "") -> str:
    """Run a tool: exit 0 and an empty stderr (readelf exits 0 even when it warns)."""
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{argv[0]} exited {proc.returncode}: {proc.stderr}"
    assert proc.stderr in ("", allowed_stderr), f"{argv[0]} wrote to stderr: {proc.stderr}"
    return proc.stdout


def loads(b: Built) -> list[elf.Phdr]:
    return b.run.vmcore.phdrs[1:]


def word_mask(arch: str) -> int:
    return (1 << (8 * elf.PRSTATUS[arch].word)) - 1


# -- 1. readelf, eu-readelf ------------------------------------------------------

PHDR_ROW = re.compile(r"^\s+(NOTE|LOAD)\s+(0x[0-9a-f]+)\s+(0x[0-9a-f]+)\s+(0x[0-9a-f]+)\s+"
                      r"(0x[0-9a-f]+)\s+(0x[0-9a-f]+)\s+([RWE ]{3})\s+(0x[0-9a-f]+|0)$", re.M)


def readelf_rows(text: str) -> list[tuple[str, int, int, int, int, int, str, int]]:
    return [(kind, *(int(x, 16) for x in nums), flg, int(align, 16))
            for kind, *nums, flg, align in PHDR_ROW.findall(text)]


def test_readelf_is_silent_and_agrees(b: Built) -> None:
    out = run_tool(require_tool("readelf"), "-a", "-W", b.vmcore)
    bits = 64 if b.arch == "x86_64" else 32
    assert re.search(rf"Class:\s+ELF{bits}\b", out) and "CORE (Core file)" in out
    want = [("NOTE" if p.p_type == elf.PT_NOTE else "LOAD", p.p_offset, p.p_vaddr, p.p_paddr,
             p.p_filesz, p.p_memsz, "RWE" if p.p_flags == RWX else "   ", p.p_align)
            for p in b.run.vmcore.phdrs]
    assert readelf_rows(out) == want
    notes = re.findall(r"^\s+(CORE|VMCOREINFO)\s+0x([0-9a-f]+)\s+(NT_PRSTATUS|Unknown note type)", out, re.M)
    prsize = elf.PRSTATUS[b.arch].size
    assert [(n, int(s, 16)) for n, s, _ in notes if n == "CORE"] == [("CORE", prsize)] * len(b.saved_cpus())
    assert sum(n == "VMCOREINFO" for n, _, _ in notes) == (1 if b.modern else 0)


# elfutils' register names (backends/x86_64_corenote.c, i386_corenote.c) -> ours.
EU_NAMES = {"rflags": "eflags", "fs.base": "fs_base", "gs.base": "gs_base"}


def eu_notes(text: str, arch: str) -> list[tuple[int, dict[str, int]]]:
    """(pid, registers) of each PRSTATUS note in `eu-readelf -n` output."""
    names = elf.PRSTATUS[arch].reg_names
    out = []
    for block in re.split(r"\bCORE\s+\d+\s+PRSTATUS\b", text)[1:]:
        block = block.split("VMCOREINFO")[0]
        pid = int(re.search(r"\bpid: (-?\d+),", block).group(1))
        regs = {}
        for name, value in re.findall(r"([a-z0-9_.]+):\s+(-?0x[0-9a-f]+|-?\d+)", block):
            ours = EU_NAMES.get(name, name)
            if ours in names:
                regs[ours] = int(value, 0) & word_mask(arch)    # eu-readelf prints some signed
        out.append((pid, regs))
    return out


def test_eu_readelf_is_silent_and_decodes_every_cpu(b: Built) -> None:
    out = run_tool(require_tool("eu-readelf"), "-a", "-n", b.vmcore)
    assert re.search(r"Type:\s+CORE", out)
    want = [(c["pid"], c["registers"]) for c in b.saved_cpus()]
    assert eu_notes(out, b.arch) == want
    assert ("VMCOREINFO" in out) == b.modern


# -- 2. pyelftools: segments, notes, layout ------------------------------------

def test_pyelftools_segments_and_notes(b: Built) -> None:
    with open(b.vmcore, "rb") as fh:
        ef = ELFFile(fh)
        assert ef["e_type"] == "ET_CORE" and ef.num_sections() == 0
        assert ef.elfclass == (64 if b.arch == "x86_64" else 32)
        assert ef["e_machine"] == ("EM_X86_64" if b.arch == "x86_64" else "EM_386")
        segs = list(ef.iter_segments())
        assert [s["p_type"] for s in segs] == ["PT_NOTE"] + ["PT_LOAD"] * len(loads(b))
        notes = [n for s in segs if s["p_type"] == "PT_NOTE" for n in s.iter_notes()]
        for s, p in zip(segs[1:], loads(b)):
            assert (s["p_offset"], s["p_paddr"], s["p_vaddr"], s["p_filesz"], s["p_memsz"]) == (
                p.p_offset, p.p_paddr, p.p_vaddr, p.p_memsz, p.p_memsz)
            assert s["p_flags"] == RWX and s["p_align"] == 0
        # every PT_LOAD's data is in the file
        assert max(s["p_offset"] + s["p_filesz"] for s in segs) <= os.path.getsize(b.vmcore)
    saved = b.saved_cpus()
    prstatus = [n for n in notes if n["n_type"] == "NT_PRSTATUS"]
    assert [n["n_name"] for n in prstatus] == ["CORE"] * len(saved)
    assert [elf.unpack_prstatus(b.arch, n["n_desc"]) for n in prstatus] == [
        (c["pid"], c["registers"]) for c in saved]
    missing = {c["id"] for c in b.report["cpus"]} - {c["id"] for c in saved}
    assert missing == set(b.run.machine.cfg.cpus.unresponsive)
    assert missing == set(b.report["metrics"]["cpus_missing"])
    info = [n for n in notes if n["n_name"] == "VMCOREINFO"]
    assert len(notes) == len(saved) + len(info)
    if b.modern:
        assert len(info) == 1 and notes[-1] is info[0]
        text = info[0]["n_desc"].decode() if isinstance(info[0]["n_desc"], bytes) else info[0]["n_desc"]
        assert text.startswith(f"OSRELEASE={D.OSRELEASE['modern']}\n") and "\nCRASHTIME=" in text
    else:
        assert info == []


def ram_minus_reservation(b: Built) -> list[tuple[int, int]]:
    r = b.run.machine.reservation
    out = []
    for s, e in b.run.machine.ram_ranges:
        for lo, hi in ((s, min(e, r.start)), (max(s, r.end), e)):
            if lo < hi:
                out.append((lo, hi))
    return out


def test_modern_layout_is_the_kernels(modern: Built) -> None:
    """fs/proc/vmcore.c (modern): notes on the first page boundary; each PT_LOAD
    page-aligned in the file plus its source's in-page offset; kernel text
    first, RAM without the reservation, RWE, p_align 0. kexec_load
    (kexec-tools, crashdump-x86.c): the low RAM range's data from the backup
    copy; kexec_file_load (crash_prepare_elf64_headers): no backup, RAM from 1 MiB."""
    b = modern
    v, m = b.run.vmcore, b.run.machine
    note = v.phdrs[0]
    assert note.p_offset == PAGE == v.notes_offset and note.p_filesz == len(v.notes)
    ks, ke = m.kernel_image
    text, *ram = loads(b)
    assert (text.p_paddr, text.p_memsz, text.p_vaddr) == (ks, ke - ks, D.START_KERNEL_MAP + ks)
    want = ram_minus_reservation(b)
    if b.file_load:
        want = [(max(s, 0x100000), e) for s, e in want if e > 0x100000]
    assert [(p.p_paddr, p.p_paddr + p.p_memsz) for p in ram] == want
    assert all(p.p_vaddr == D.PAGE_OFFSET[("x86_64", "modern")] + p.p_paddr for p in ram)
    r = m.reservation
    assert not any(p.p_paddr < r.end and r.start < p.p_paddr + p.p_memsz for p in loads(b))
    backup = b.report["backup"]
    low = ram[0]
    if b.file_load:
        assert backup is None and low.p_paddr == 0x100000
    else:
        assert (low.p_paddr, low.p_memsz) == (m.ram_ranges[0][0], backup["size"]) == (0x1000, 0x9EC00)
        assert chunk_for(b, low).paddr == backup["dest"]
    pos = PAGE + -(-len(v.notes) // PAGE) * PAGE
    for p, chunk in zip(loads(b), v.chunks):
        source = chunk.paddr + (p.p_offset - chunk.offset)        # where /proc/vmcore read it
        assert p.p_offset % PAGE == source % PAGE
        assert p.p_offset - p.p_offset % PAGE == pos
        pos += -(-(p.p_offset % PAGE + p.p_memsz) // PAGE) * PAGE
        assert p.p_flags == RWX and p.p_align == 0 and p.p_filesz == p.p_memsz
    assert pos == v.size == os.path.getsize(b.vmcore)


def chunk_for(b: Built, p: elf.Phdr):
    return next(c for c, q in zip(b.run.vmcore.chunks, loads(b)) if q is p)


def layout_shape(rows: list[tuple]) -> dict[str, Any]:
    """What a modern x86_64 /proc/vmcore's program headers look like, values aside."""
    note, *lds = rows
    return {
        "note": (note[0], note[1], note[6].strip(), note[7]),                  # NOTE at 0x1000
        "kernel_text_first": lds[0][2] >= D.START_KERNEL_MAP,
        "loads": {(kind, flg, align, off % PAGE == paddr % PAGE, filesz == memsz)
                  for kind, off, _v, paddr, filesz, memsz, flg, align in lds},   # LOAD, RWE, 0
        "ram_ascending": [r[3] for r in lds[1:]] == sorted(r[3] for r in lds[1:]),
    }


def test_modern_layout_has_the_real_samples_shape(modern: Built) -> None:
    """The real 6.1 sample is a kexec_load dump: the same shape, and its
    backup PT_LOAD (paddr 0x1000, 0x9ec00 bytes) after the kernel text; a
    kexec_file_load dump has none, its RAM starting at 1 MiB."""
    readelf = require_tool("readelf")
    real = readelf_rows(run_tool(readelf, "-l", "-W", REAL_SAMPLE))
    ours = readelf_rows(run_tool(readelf, "-l", "-W", modern.vmcore))
    assert len(real) == 5 and len(ours) >= 4
    assert layout_shape(ours) == layout_shape(real)
    backup_row = (real[2][3], real[2][4])                                    # paddr 0x1000, 0x9ec00
    assert backup_row == (0x1000, 0x9EC00)
    if modern.file_load:
        assert ours[2][3] == 0x100000 and all(r[3] >= 0x100000 for r in ours[2:])
    else:
        assert (ours[2][3], ours[2][4]) == backup_row


def test_2005_layout(old_era: Built) -> None:
    """fs/proc/vmcore.c in 2.6.13: notes right after the program headers, each
    PT_LOAD's data right after the previous one; ELF32 for the i386 paper model."""
    b = old_era
    v, m = b.run.vmcore, b.run.machine
    lay = elf.layout_for(v.elfclass)
    assert v.elfclass == elf.ELFCLASS32 and v.e_machine == elf.EM_386
    note = v.phdrs[0]
    assert note.p_offset == lay.ehdr_size + len(v.phdrs) * lay.phdr_size
    pos = note.p_offset + note.p_filesz
    for p in loads(b):
        assert p.p_offset == pos and p.p_filesz == p.p_memsz
        pos += p.p_memsz
    assert pos == v.size == os.path.getsize(b.vmcore)
    if m.cfg.design == "2004":
        # paper 2.3: one PT_LOAD from 0 over all of memory, holes included
        (only,) = loads(b)
        assert (only.p_paddr, only.p_memsz) == (0, m.ram_ranges[-1][1])
    else:
        assert [(p.p_paddr, p.p_paddr + p.p_memsz) for p in loads(b)] == ram_minus_reservation(b)
        assert loads(b)[0].p_paddr == 0 and chunk_for(b, loads(b)[0]).paddr == b.report["backup"]["dest"]


# -- 3. gdb ----------------------------------------------------------------------

GDB_THREAD = re.compile(r"^Thread (\d+) \((?:LWP (\d+)|process (\d+))\):$", re.M)
GDB_REG = re.compile(r"^([a-z0-9_]+)\s+(0x[0-9a-f]+)\s", re.M)


# gdb's words when a second pr_pid 0 note replaces the thread it had made for
# the first (its thread 1, the current one): see gdb_expected.
GDB_PID0_AGAIN = "The current thread has terminated\n"


def gdb_threads(gdb: str, path: Path, arch: str, pid0_notes: int) -> dict[int, dict[str, int]]:
    """{lwp: registers} for every thread gdb shows (lwp 0: gdb's "process 1")."""
    names = " ".join(n for n in elf.PRSTATUS[arch].reg_names)
    out = run_tool(gdb, "-batch", "-nx", "-c", path, "-ex", "info threads",
                   "-ex", f"thread apply all info registers {names}",
                   allowed_stderr=GDB_PID0_AGAIN if pid0_notes > 1 else "")
    listed = re.findall(r"^\*?\s+\d+\s+(?:LWP (\d+)|process \d+)\s", out, re.M)
    parts = GDB_THREAD.split(out)[1:]
    threads: dict[int, dict[str, int]] = {}
    for i in range(0, len(parts), 4):
        _num, lwp, _proc, body = parts[i:i + 4]
        key = int(lwp) if lwp else 0
        assert key not in threads, f"gdb shows LWP {key} twice"
        threads[key] = {n: int(v, 16) for n, v in GDB_REG.findall(body)}
    assert sorted(int(x or 0) for x in listed) == sorted(threads)
    return threads


def gdb_expected(saved: list[dict[str, Any]]) -> dict[int, dict[str, int]]:
    """What gdb must show, given how bfd and gdb read NT_PRSTATUS notes.

    bfd (elf.c _bfd_elfcore_make_pseudosection) makes a ".reg/PID" section per
    note and, for the first note only, ".reg" too (elfcore_maybe_make_sect).
    gdb makes one thread per distinct PID (duplicates collapse), and reads a
    thread whose LWP is 0 (an idle CPU: pr_pid 0, as the real kernel writes it)
    from ".reg" (gdbcore.h thread_section_name: no LWP -> plain name), i.e. the
    first note's registers. The same happens on a real vmcore with idle CPUs.
    """
    out: dict[int, dict[str, int]] = {}
    for c in saved:
        out.setdefault(c["pid"], c["registers"])
    if 0 in out:
        out[0] = saved[0]["registers"]
    return out


def test_gdb_threads_and_registers(b: Built) -> None:
    gdb = require_tool("gdb")
    saved = b.saved_cpus()
    threads = gdb_threads(gdb, b.vmcore, b.arch, sum(c["pid"] == 0 for c in saved))
    assert threads == gdb_expected(saved)
    sp, ip = ("rsp", "rip") if b.arch == "x86_64" else ("esp", "eip")
    for c in saved:
        if c["pid"]:
            regs = threads[c["pid"]]
            assert (regs[ip], regs[sp], regs["eflags"]) == (
                c["registers"][ip], c["registers"][sp], c["registers"]["eflags"])
    distinct = len({c["pid"] for c in saved}) == len(saved)
    assert distinct or b.case not in (CASES["modern-2"], CASES["modern-load-2"])   # every CPU busy, pids differ
    if distinct:
        assert len(threads) == len(saved)               # one thread per saved CPU


# -- 4. libkdumpfile ---------------------------------------------------------------

def require_libkdumpfile() -> None:
    """Like require_tool: skip without python3-libkdumpfile, fail under CI."""
    ok = os.access(SYSTEM_PYTHON, os.X_OK) and subprocess.run(
        [SYSTEM_PYTHON, "-c", "import kdumpfile"], capture_output=True, check=False).returncode == 0
    if not ok:
        message = f"python3-libkdumpfile is not importable by {SYSTEM_PYTHON}"
        if "CI" in os.environ:
            pytest.fail(f"{message} (required because CI is set)")
        pytest.skip(message)


def probe(path: Path, reads: list[tuple[str, int, int]], ostype: str | None, tmp: Path) -> dict[str, Any]:
    require_libkdumpfile()
    req = tmp / "probe.json"
    req.write_text(json.dumps({"path": str(path), "ostype": ostype, "reads": reads}))
    proc = subprocess.run([SYSTEM_PYTHON, str(PROBE), str(req)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    return json.loads(proc.stdout)


def dma_pages(b: Built) -> list[int]:
    """Dumped pages a DMA engine wrote after the panic (up to 12, spread out)."""
    devices = b.run.device_names
    pages = sorted({w.addr & ~(PAGE - 1) for w in b.run.machine.memory.log
                    if w.actor in devices and w.time > 0})
    pages = [a for a in pages if any(p.p_paddr <= a and a + PAGE <= p.p_paddr + p.p_memsz for p in loads(b))]
    return pages[:: max(1, len(pages) // 12)][:12]


def read_plan(b: Built) -> list[tuple[int, int]]:
    """(paddr, size) reads: start, unaligned, middle, page-crossing, last page
    and last bytes of every PT_LOAD; inside the backup region; DMA-hit pages."""
    plan: list[tuple[int, int]] = []
    for p in loads(b):
        s, e = p.p_paddr, p.p_paddr + p.p_memsz
        mid = (s + (e - s) // 2) & ~(PAGE - 1)
        plan += [(s, 256), (s + 0x123, 100), (mid, PAGE), (mid - 40, 80), (e - PAGE, PAGE), (e - 64, 64)]
    backup = b.report["backup"]
    if backup:
        plan += [(backup["src"] + 0x800, 512), (backup["src"] + backup["size"] - 300, 300)]
    return plan + [(a, PAGE) for a in dma_pages(b)]


def test_libkdumpfile_reads_what_the_dump_holds(b: Built, tmp_path: Path) -> None:
    plan = read_plan(b)
    # libkdumpfile must be told the OS for kernel-physical reads (kdumpfile_probe.py)
    reads = [("KPHYSADDR", a, n) for a, n in plan] + [("MACHPHYSADDR", a, n) for a, n in plan[:6]]
    got = probe(b.vmcore, reads, "linux", tmp_path)
    assert got["ostype_error"] is None
    attrs = got["attrs"]
    assert attrs["addrxlat.ostype"] == "linux"
    assert attrs["file.format"] == "elf"
    assert attrs["arch.name"] == ("x86_64" if b.arch == "x86_64" else "ia32")
    assert attrs["cpu.number"] == len(b.saved_cpus())
    assert attrs["max_pfn"] == max(p.p_paddr + p.p_memsz for p in loads(b)) // PAGE
    if b.modern:
        # from VMCOREINFO, and from init_uts_ns in the dumped kernel image
        assert attrs["linux.vmcoreinfo.lines.OSRELEASE"] == attrs["linux.uts.release"] == D.OSRELEASE["modern"]
        assert (attrs["linux.uts.sysname"], attrs["linux.uts.machine"]) == ("Linux", "x86_64")
    else:
        assert attrs["linux.vmcoreinfo.lines.OSRELEASE"] is None
    for (space, addr, size), r in zip(reads, got["reads"], strict=True):
        assert "hex" in r, f"{space} {addr:#x}+{size}: {r.get('error')}"
        assert bytes.fromhex(r["hex"]) == dump_bytes(b.run, addr, size), f"{space} {addr:#x}+{size}"
    # what libkdumpfile reads for DMA-hit pages is the changed content, not RAM at the panic
    mem = b.run.machine.memory
    hit = dma_pages(b)
    if b.report["metrics"]["dump_pages_corrupted"]:
        assert hit and any(dump_bytes(b.run, a, PAGE) != mem.read(a, PAGE, 0) for a in hit)
    # registers: cpu.N is the N-th NT_PRSTATUS note
    names = {"rflags": "eflags"}
    for c, lk in zip(b.saved_cpus(), got["cpus"], strict=True):
        assert lk["pid"] == c["pid"]
        assert {names.get(k, k): v for k, v in lk["regs"].items()} == c["registers"]


def test_libkdumpfile_excludes_the_reservation(split: Built, tmp_path: Path) -> None:
    """The reservation is not in a modern or 2005 dump (the 2004 one covers all
    memory from 0): reading it is an error, not zeros."""
    r = split.run.machine.reservation
    got = probe(split.vmcore, [("KPHYSADDR", r.start + PAGE, 64)], "linux", tmp_path)
    assert "error" in got["reads"][0]


# -- 5. /dev/oldmem and /proc/vmcore agree -------------------------------------------

def same_bytes(a: Path, a_off: int, b_: Path, b_off: int, size: int) -> int | None:
    """First differing offset (relative) of two file ranges, or None; block by block."""
    with open(a, "rb") as fa, open(b_, "rb") as fb:
        fa.seek(a_off)
        fb.seek(b_off)
        done = 0
        while done < size:
            n = min(BLOCK, size - done)
            x, y = fa.read(n), fb.read(n)
            if x != y or len(x) != n:
                return done + next((i for i in range(min(len(x), len(y))) if x[i] != y[i]), min(len(x), len(y)))
            done += n
    return None


def test_oldmem_and_vmcore_agree(b: Built) -> None:
    """Every byte /proc/vmcore read (chunk by chunk: a PT_LOAD, rounded to pages
    in the modern layout; the 2004 PT_LOAD is two, its first 16 MiB read from
    the backup) equals /dev/oldmem at the address it was read from."""
    assert os.path.getsize(b.oldmem) == b.run.machine.memory.ram[-1][1]
    chunks = b.run.vmcore.chunks
    for p in loads(b):     # the chunks cover every PT_LOAD byte
        covered = sum(max(0, min(c.offset + c.size, p.p_offset + p.p_filesz) - max(c.offset, p.p_offset))
                      for c in chunks)
        assert covered == p.p_filesz
    for c in chunks:
        bad = same_bytes(b.vmcore, c.offset, b.oldmem, c.paddr, c.size)
        assert bad is None, (f"chunk for paddr {c.origin:#x}: file {c.offset + bad:#x} != "
                             f"oldmem {c.paddr + bad:#x}")


def test_oldmem_holds_the_backup_source_as_it_was(backed_up: Built) -> None:
    """Low memory itself (not its backup copy) is in /dev/oldmem at its own address."""
    b = backed_up
    backup = b.report["backup"]
    with open(b.oldmem, "rb") as fh:
        fh.seek(backup["src"] + 0x1000)
        low = fh.read(64)
    assert low == b.run.machine.memory.read(backup["src"] + 0x1000, 64, b.run.copy.start)


# -- 6. determinism ----------------------------------------------------------------

def file_sha256(path: Path, ranges: list[tuple[int, int]] | None = None) -> str:
    """sha256 of a file, or of its byte ranges (a sparse /dev/oldmem: its RAM only)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for start, end in ranges or [(0, os.path.getsize(path))]:
            fh.seek(start)
            while start < end:
                block = fh.read(min(BLOCK, end - start))
                assert block, f"{path} ends at {start:#x}"
                h.update(block)
                start += len(block)
    return h.hexdigest()


@pytest.mark.parametrize("key1, key2", [("i386-2004-1", "i386-2004-2"), ("modern-1", "modern-2")])
def test_same_seed_same_bytes_other_seed_other_bytes(built: dict[str, Built], key1: str, key2: str,
                                                     tmp_path: Path) -> None:
    first = built[key1]
    again = build(first.case, tmp_path / "again")
    assert dumps(again.report) == dumps(first.report)
    assert file_sha256(again.vmcore) == file_sha256(first.vmcore)
    ram = first.run.machine.memory.ram
    assert file_sha256(again.oldmem, ram) == file_sha256(first.oldmem, ram)
    other = built[key2]
    assert file_sha256(other.vmcore) != file_sha256(first.vmcore)
    assert dumps(other.report) != dumps(first.report)


# -- 7. the CLI end to end ----------------------------------------------------------

def test_cli_run_then_inspect(tmp_path: Path) -> None:
    case = CASES["i386-2005-1"]
    report, vmcore = tmp_path / "r.json", tmp_path / "v.vmcore"
    cli = [sys.executable, "-m", "kdumpsim"]
    sets = [a for o in case.overrides for a in ("--set", o)]
    proc = subprocess.run(cli + ["run", str(case.path), "--seed", "3", *sets, "--report", str(report),
                                 "--vmcore", str(vmcore), "--quiet"],
                          capture_output=True, text=True, check=False, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == "", proc.stderr
    rep = json.loads(report.read_text())
    proc = subprocess.run(cli + ["inspect", str(vmcore), "--json"], capture_output=True, text=True,
                          check=False, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    saved = [c for c in rep["cpus"] if c["id"] not in rep["metrics"]["cpus_missing"]]
    assert [(c["pid"], c["registers"]) for c in summary["cpus"]] == [
        (c["pid"], c["registers"]) for c in saved]
    assert summary["warnings"] == []
    assert [(ld["paddr_start"], ld["size"]) for ld in summary["loads"]] == [
        (ld["paddr"], ld["size"]) for ld in rep["vmcore"]["loads"]]
    assert summary["size"] == rep["vmcore"]["size"] == os.path.getsize(vmcore)


# -- the shipped models at full size: headers and notes only (sparse files) -----------

@pytest.mark.parametrize("model", ["modern-x86_64", "rhel8-x86_64", "paper-i386-2005", "paper-i386-2004"])
def test_shipped_model_headers_at_full_size(model: str, tmp_path: Path) -> None:
    """The unmodified model (8 GiB and 32 CPUs for modern-x86_64): the real header
    and notes, the PT_LOAD data left as a hole, so the tools see the real layout."""
    run = simulate(load_model(MODELS / f"{model}.yaml"), 0)
    v = run.vmcore
    path = tmp_path / "vmcore"
    with open(path, "wb") as fh:
        fh.write(v.head_bytes())
        fh.truncate(v.size)
    run_tool(require_tool("readelf"), "-a", "-W", path)
    eu = run_tool(require_tool("eu-readelf"), "-a", "-n", path)
    report = build_report(run)
    by_addr = {c["note_addr"]: c for c in report["cpus"]}
    saved = [by_addr[a] for a in v.note_sources if a in by_addr]
    assert eu_notes(eu, run.machine.arch) == [(c["pid"], c["registers"]) for c in saved]
    with open(path, "rb") as fh:
        segs = list(ELFFile(fh).iter_segments())
        assert len(segs) == len(v.phdrs)
    pid0 = sum(c["pid"] == 0 for c in saved)
    assert gdb_threads(require_tool("gdb"), path, run.machine.arch, pid0) == gdb_expected(saved)


# -- the real 6.1 guest, loaded both ways ---------------------------------------------

REAL_DMESG = Path(__file__).resolve().parent / "data" / "real-6.1-kexec_file-dmesg.txt"   # shared/reference copy


def real_guest_overrides(crashkernel: str) -> list[str]:
    """The real guest as a model: its firmware memory map after the kernel's
    fix-ups ("e820: update [mem 0x00000000-0x00000fff] usable ==> reserved"),
    its possible and hotplug CPUs ("smpboot: Allowing N CPUs, M hotplug CPUs")."""
    text = REAL_DMESG.read_text()
    e820 = re.findall(r"BIOS-e820: \[mem (0x[0-9a-f]+)-(0x[0-9a-f]+)\] (\w+)", text)
    iomem = []
    for lo, hi, kind in e820:
        lo_, hi_ = int(lo, 16), int(hi, 16)
        if kind == "usable" and lo_ == 0 and "update [mem 0x00000000-0x00000fff] usable ==> reserved" in text:
            iomem.append("00000000-00000fff : reserved")
            lo_ = 0x1000
        iomem.append(f"{lo_:08x}-{hi_:08x} : " + ("System RAM" if kind == "usable" else "reserved"))
    allowing = re.search(r"smpboot: Allowing (\d+) CPUs, (\d+) hotplug CPUs", text)
    cpus, hotplug = int(allowing.group(1)), int(allowing.group(2))
    return ["memory.iomem=" + json.dumps(iomem), "memory.numa_nodes=1", "topology.buses.1.numa_node=0",
            f"cpus.count={cpus - hotplug}", f"cpus.possible={cpus}", "cpus.sockets=1", "cpus.panic_cpu=0", "devices=[]",
            f"kexec.crashkernel={crashkernel}"]


@pytest.mark.parametrize("method", ["kexec_file_load", "kexec_load"])
def test_the_real_guest_gives_the_real_dumps_structure(method: str, tmp_path: Path) -> None:
    """The real 6.1 sample (kexec_load, its reservation at 0x1e000000) and the
    same guest's kexec_file_load boot (dmesg: "Reserving 256MB of memory at
    752MB"): our dump of that guest has the sample's RAM PT_LOADs, without the
    backup one for kexec_file_load, and one NT_PRSTATUS per possible CPU; readelf
    reads it silently."""
    readelf = require_tool("readelf")
    real = readelf_rows(run_tool(readelf, "-l", "-W", REAL_SAMPLE))
    real_ram = [(r[3], r[4]) for r in real[2:]]            # after NOTE and kernel text
    assert real_ram[0] == (0x1000, 0x9EC00)               # the backup row: kexec_load only
    cfg = load_model(MODELS / "modern-x86_64.yaml", real_guest_overrides("256M@0x1e000000")
                     + [f"kexec.method={method}"])
    run = simulate(cfg, 1)
    path = tmp_path / "vmcore"
    write_vmcore(run, path)
    ours = readelf_rows(run_tool(readelf, "-l", "-W", path))
    assert layout_shape(ours) == layout_shape(real)
    want = real_ram[1:] if method == "kexec_file_load" else real_ram
    assert [(r[3], r[4]) for r in ours[2:]] == want
    notes = run_tool(readelf, "-n", path)
    assert notes.count("NT_PRSTATUS") == cfg.cpus.count == 2 and notes.count("VMCOREINFO") == 1
    # the kexec_file_load boot's own reservation: RAM from 1 MiB around it
    at = re.search(r"Reserving (\d+)MB of memory at (\d+)MB", REAL_DMESG.read_text())
    size, base = int(at.group(1)) << 20, int(at.group(2)) << 20
    cfg = load_model(MODELS / "modern-x86_64.yaml", real_guest_overrides(f"{size >> 20}M@{base:#x}")
                     + [f"kexec.method={method}"])
    run = simulate(cfg, 1)
    ram = [(p.p_paddr, p.p_paddr + p.p_memsz) for p in run.vmcore.phdrs[2:]]
    tail = [(0x100000, base), (base + size, 0x3FFDD000)]
    assert ram == (tail if method == "kexec_file_load" else [(0x1000, 0x9FC00)] + tail)
