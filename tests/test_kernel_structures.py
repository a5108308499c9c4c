"""The first kernel's structures inside the dump, read by the real tools (issue #8).

The modern model (small memory map, as in test_vmcore) is simulated twice: as
6.1 (the lockless printk ring) and as 4.18 (printk_log records). Each vmcore
is written once per module; then

- makedumpfile --dump-dmesg prints the run's own kernel log, line for line
  (both formats), and crash --log prints it from the 4.18 dump;
- makedumpfile -c -d 31 excludes exactly the pages the simulated struct page
  array says are free / cache / user, and the zero pages, and libkdumpfile
  opens the filtered dump and can read exactly the pages that remain;
- libkdumpfile (addrxlat.ostype=linux) reads kernel-text, direct-map and
  vmemmap addresses through our page tables to the right physical bytes;
- analyse_vmcore (the per-run metric) calls such a dump analysable, and one
  whose page tables or log DMA overwrote before the copy read them not.
"""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import require_tool

from kdumpsim import defaults as D
from kdumpsim.config.model import load_model
from kdumpsim.firstkernel import mm as FK
from kdumpsim.firstkernel.printk import expected_dmesg
from kdumpsim.firstkernel.vmcoreinfo import vmcoreinfo_lines
from kdumpsim.formats.vmcore import _base_block, _Pattern, dump_bytes, write_vmcore
from kdumpsim.measure import simulate
from kdumpsim.measure.analysis import (
    analyse_vmcore,
    dumped_pfns,
    expected_filter,
    kdump_bitmaps,
    kdumpfile_probe,
    parse_filter_report,
)

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "modern-x86_64.yaml"
REAL_VMCOREINFO = Path(__file__).parent / "data" / "real-6.1.vmcoreinfo.txt"   # copied from shared/reference/
SMALL = ('memory.iomem=["00000000-00000fff : reserved", "00001000-0009fbff : System RAM", '
         '"0009fc00-0009ffff : reserved", "000f0000-000fffff : System ROM", '
         '"00100000-05ffffff : System RAM", "06000000-07ffffff : reserved", '
         '"08000000-0fffffff : System RAM", "10000000-fedfffff : PCI Bus", '
         '"100000000-103ffffff : System RAM"]', "kexec.crashkernel=64M", "kexec.capture_kernel_init_size=16M",
         "kexec.initrd_size=4M", "cpus.count=6", "cpus.panic_cpu=1",
         "cpus.unresponsive={3: hung}")


def _sim(*extra: str, seed: int = 1):
    return simulate(load_model(MODEL, list(SMALL) + list(extra)), seed)


@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    """{label: (run, vmcore path)} for 6.1 and 4.18, each loaded with
    kexec_file_load (label: the version) and kexec_load ("<version>-kexec_load")."""
    out = {}
    base = tmp_path_factory.mktemp("kstructs")
    for version in ("6.1", "4.18"):
        for method in ("kexec_file_load", "kexec_load"):
            label = version if method == "kexec_file_load" else f"{version}-kexec_load"
            run = _sim(f"kernel.version={version}", f"kexec.method={method}")
            path = base / f"{label}.vmcore"
            write_vmcore(run, path)
            out[label] = (run, path)
    return out


# ---------------------------------------------------------------- without tools
def test_vmcoreinfo_is_the_real_6_1_set() -> None:
    """Same keys, same order as a real 6.1 kernel's note (bar the kallsyms_*
    lines of the sample's stable kernel, and CRASHTIME, added at the crash)."""
    run = _sim()
    ours = [line.split("=")[0] for line in vmcoreinfo_lines(run.machine)]
    real = [line.split("=")[0] for line in REAL_VMCOREINFO.read_text().splitlines()]
    real = [k for k in real if "kallsyms" not in k and k != "CRASHTIME"]
    assert ours == real
    old = [line.split("=")[0] for line in vmcoreinfo_lines(_sim("kernel.version=4.18").machine)]
    assert "SYMBOL(log_buf)" in old and "SYMBOL(prb)" not in old and "OFFSET(printk_log.dict_len)" in old


def test_page_classes_scalar_and_vector_agree() -> None:
    k = _sim().machine.kernel_structs
    rng = np.random.default_rng(0)
    pfns = np.concatenate([rng.integers(0, 0x104000, 3000, dtype=np.uint64),
                           np.arange(0x3f00, 0x4100, dtype=np.uint64)])
    vec = k.page_classes(pfns)
    assert [k.page_class(int(p)) for p in pfns] == vec.tolist()
    assert set(vec.tolist()) == set(range(7))


def test_bulk_base_content_equals_page_by_page() -> None:
    """vmcore's numpy bulk path (_base_block) and PhysicalMemory.base_page
    agree over the struct page array and over zero pages."""
    run = _sim()
    m, k = run.machine, run.machine.kernel_structs
    mem, pat = m.memory, _Pattern(m.memory.key)
    zero = next(p for p in range(0x9000, 0x20000) if k.page_class(p) == FK.ZERO)
    for addr in (k.memmap, k.memmap + 2 * 1024 * 1024 - 64 * 1024, (zero << 12) - 8192, 0x100000):
        bulk = bytes(_base_block(mem, pat, addr, 64 * 1024))
        assert bulk == b"".join(bytes(mem.base_page((addr >> 12) + i)) for i in range(16)), hex(addr)
    assert mem.base_page(zero) == bytes(4096)


def test_struct_page_says_what_the_page_is() -> None:
    k = _sim().machine.kernel_structs
    pg = k.pg
    pfns = np.arange(0x9000, 0xA000, dtype=np.uint64)
    words, cls = k.struct_pages(pfns), k.page_classes(pfns)
    for w, c in zip(words, cls):
        flags, mapping, mapcount = int(w[0]), int(w[3]), int(w[6]) & 0xFFFF_FFFF
        if c == FK.FREE:
            assert mapcount == FK.PAGE_BUDDY_MAPCOUNT_VALUE & 0xFFFF_FFFF and w[5] == 0
        elif c in (FK.CACHE, FK.CACHE_PRIVATE):
            assert flags >> pg["lru"] & 1 and mapping and not mapping & 1
            assert bool(flags >> pg["private"] & 1) == (c == FK.CACHE_PRIVATE)
        elif c == FK.USER:
            assert flags >> pg["lru"] & 1 and mapping & 1
        else:
            assert not flags >> pg["lru"] & 1 and mapcount != FK.PAGE_BUDDY_MAPCOUNT_VALUE & 0xFFFF_FFFF


def test_own_page_walk() -> None:
    run = _sim()
    m, k = run.machine, run.machine.kernel_structs
    assert k.vtop(k.symbol("init_uts_ns")) == m.kernel_image[0] + FK.INIT_UTS_NS
    assert k.vtop(k.dmap(0x1234_5678)) == 0x1234_5678
    assert k.vtop(k.vmemmap(0x8003)) == k.memmap_paddr(0x8003)
    assert k.vtop(k.vmemmap(0x20 << 15)) == k.memmap_paddr(0x20 << 15)        # section 32 (at 4 GiB)
    assert k.vtop(k.vmemmap(0x10 << 15)) is None                               # no RAM in section 16


def test_kernel_structures_are_dma_regions() -> None:
    run = _sim()
    k = run.machine.kernel_structs
    assert run.region_of(k.memmap + 12345) == "mem_map"
    assert run.region_of(k.pgd + 8) == "page_tables"
    assert run.region_of(k.text_paddr(FK.LOG_BUF) + 100) == "log_buf"
    assert run.region_of(k.text_paddr(FK.PRB_DESCS)) == "printk_descs"
    assert run.region_of(k.mem_section_roots) == "mem_section"
    assert run.region_of(k.text_paddr(FK.INIT_UTS_NS)) == "init_uts_ns"


def test_the_log_holds_the_run() -> None:
    run = _sim()
    log = expected_dmesg(run.machine)
    assert log[0].startswith("[    0.000000] Linux version 6.1.0-kdumpsim")
    assert any("Reserving 64MB of memory at" in line and "for crashkernel" in line for line in log)
    assert any("Kernel panic - not syncing: sysrq triggered crash" in line for line in log)
    assert any("NMI shootdown" in line and "CPU 3" in line for line in log)      # the hung CPU
    assert sum("kdumpsim: CPU " in line for line in log) == 6


# ---------------------------------------------------------------- the real tools
def test_makedumpfile_dump_dmesg_prints_the_runs_log(dumps, tmp_path) -> None:
    mdf = require_tool("makedumpfile")
    for version, (run, path) in dumps.items():
        out = tmp_path / f"dmesg-{version}.txt"
        p = subprocess.run([mdf, "--dump-dmesg", str(path), str(out)], capture_output=True, text=True)
        assert p.returncode == 0, p.stdout + p.stderr
        assert out.read_text().splitlines() == expected_dmesg(run.machine), version


@pytest.mark.parametrize("label", ["4.18", "4.18-kexec_load"])
def test_crash_log_prints_the_old_format_log(dumps, label) -> None:
    crash = require_tool("crash")
    run, path = dumps[label]
    p = subprocess.run([crash, "--log", str(path)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == expected_dmesg(run.machine)


def test_makedumpfile_d31_excludes_exactly_the_simulated_pages(dumps, tmp_path) -> None:
    mdf = require_tool("makedumpfile")
    for version, (run, path) in dumps.items():
        out = tmp_path / f"{version}.d31"
        p = subprocess.run([mdf, "-c", "-d", "31", "--message-level", "31", str(path), str(out)],
                           capture_output=True, text=True)
        assert p.returncode == 0, p.stdout + p.stderr
        want = expected_filter(run)
        assert parse_filter_report(p.stdout + p.stderr) == {c: len(v) for c, v in want.items()}, version
        # Which ones: the filtered file's page bitmap keeps exactly the dumped pages
        # but the excluded non-zero ones (zero pages stay: the kdump format points
        # them at one shared zero page). makedumpfile's first bitmap keeps whole
        # pages only (create_1st_bitmap: 0x9fc00 ends a segment mid-page).
        excluded = set().union(*(want[c] for c in ("free", "cache", "cache_private", "user")))
        whole = set(dumped_pfns(run, whole=True).tolist())
        _, dumped = kdump_bitmaps(out)
        assert set(np.nonzero(dumped)[0].tolist()) == whole - excluded, version
        # libkdumpfile opens the file and agrees, page for page, over a stretch of each kind.
        first = min(whole)
        probe = kdumpfile_probe({"path": str(out), "pfn_scan": [first, first + 4095]})
        assert probe["error"] is None
        bits = np.unpackbits(np.frombuffer(bytes.fromhex(probe["readable"]), np.uint8), bitorder="little")
        readable = set((np.nonzero(bits[:4096])[0] + first).tolist())
        assert readable == set(range(first, first + 4096)) & (whole - excluded), version


def test_libkdumpfile_walks_our_page_tables(dumps) -> None:
    require_tool("/usr/bin/python3")
    run, path = dumps["6.1"]
    k = run.machine.kernel_structs
    pfns = [0x5, 0x4321, 0x8003, 0x100123]
    vaddrs = [(k.symbol("init_uts_ns"), 70), (k.dmap(0x10_2000), 64)] + [(k.vmemmap(p), 64) for p in pfns]
    probe = kdumpfile_probe({"path": str(path), "vtop": [list(v) for v in vaddrs]})
    assert probe["error"] is None and probe["uts_release"] == "6.1.0-kdumpsim"
    got = [bytes.fromhex(r["hex"]) for r in probe["vtop"]]
    assert got[0].startswith(b"Linux\0")
    assert got[1] == dump_bytes(run, 0x10_2000, 64)
    for p, g in zip(pfns, got[2:]):
        assert g == dump_bytes(run, k.memmap_paddr(p), 64)
        assert g == k.struct_pages(np.array([p], np.uint64)).tobytes()
    # The same tables walked entry by entry from the dump (makedumpfile's __vtop4_x86_64).
    walk = [v for v, _ in vaddrs] + [k.symbol("prb"), k.dmap(0x1_0000_0000 + 0x1234)]
    probe = kdumpfile_probe({"path": str(path), "walk": {"root": k.pgd, "vaddrs": walk}})
    assert [r.get("paddr") for r in probe["walk"]] == [k.vtop(v) for v in walk]
    assert probe["walk"][0]["paddr"] == run.machine.kernel_image[0] + FK.INIT_UTS_NS


def test_analyse_vmcore_says_analysable(dumps, tmp_path) -> None:
    require_tool("makedumpfile")
    for version, (run, path) in dumps.items():
        r = analyse_vmcore(path, tmp_path / version, run)
        assert r["analysable"] and r["log_matches"] and r["filter_matches"], r
        assert r["crash_log"] is (True if version.startswith("4.18") else None)


def test_dma_on_page_tables_or_log_makes_the_dump_unanalysable(tmp_path) -> None:
    """A device writing over the PGD (before the copy read it) breaks filtering
    and page walks; over the log, the log."""
    require_tool("makedumpfile")
    for target in ("pgd", "log"):
        run = _sim()
        k, mem = run.machine.kernel_structs, run.machine.memory
        addr = k.pgd if target == "pgd" else k.text_paddr(FK.PRINTK_RB_STATIC)
        mem.write(addr, bytes(range(256)) * 16, run.copy.start - 1, "nic0")
        path = tmp_path / f"{target}.vmcore"
        write_vmcore(run, path)
        r = analyse_vmcore(path, tmp_path / target, run)
        assert not r["analysable"]
        if target == "pgd":
            assert not r["filter_ok"] and not r["pagetables_ok"]
        else:
            assert not r["log_readable"] and r["filter_ok"] and r["pagetables_ok"]


def test_vmemmap_entry_is_a_2m_page() -> None:
    run = _sim()
    k, mem = run.machine.kernel_structs, run.machine.memory
    v = k.vmemmap(0)
    pgd = struct.unpack("<Q", mem.read(k.pgd + FK._pgd_index(v) * 8, 8))[0]
    pud = struct.unpack("<Q", mem.read((pgd & ~0xFFF & (1 << 52) - 1) + FK._pud_index(v) * 8, 8))[0]
    pmd = struct.unpack("<Q", mem.read((pud & ~0xFFF & (1 << 52) - 1) + FK._pmd_index(v) * 8, 8))[0]
    assert pmd & 0x81 == 0x81 and pmd & 0x000F_FFFF_FFE0_0000 == k.memmap
    assert D.VMEMMAP_START_X86_64 == v
