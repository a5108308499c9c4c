"""Does a vmcore still analyse? Run the real crash tools on it (issue #8).

    result = analyse_vmcore(path, workdir, run=None)

runs
  makedumpfile --dump-dmesg VMCORE OUT        the kernel log (both formats)
  crash --log VMCORE                          the kernel log (printk_log format only:
                                              Debian's crash 8.0.x cannot read the 5.10+ ring)
  makedumpfile -c -d 31 VMCORE OUT            filtering through struct page, page tables
  libkdumpfile (/usr/bin/python3)             opens the filtered dump; kernel-virtual
                                              reads through the page tables
and returns plain values (JSON-ready):

  log_readable      makedumpfile printed a log holding "Kernel panic - not syncing"
  crash_log         crash --log printed it (None: not tried, the kernel's log format
                    is the lockless ring crash 8.0 cannot read, or no crash installed)
  filter_ok         makedumpfile -d 31 wrote a dump and libkdumpfile opens it
  pagetables_ok     init_top_pgt, read from the dump, maps a kernel-text
                    (init_uts_ns), a direct-map (mem_section) and a vmemmap
                    (struct page) address where they belong, and libkdumpfile
                    (addrxlat) reads init_uts_ns and the vmemmap one
  analysable        log_readable and filter_ok and pagetables_ok
  log_lines, filter_counts, errors: details
With `run` (the CrashRun that made the file) it also compares with the truth:
  log_matches       the printed log is the run's log, line for line
  filter_matches    makedumpfile's exclusion counts equal `expected_filter(run)`'s
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kdumpsim import defaults as D
from kdumpsim.firstkernel import mm as FK
from kdumpsim.formats.reader import parse_vmcoreinfo

if TYPE_CHECKING:
    from kdumpsim.crash.run import CrashRun

SYSTEM_PYTHON = "/usr/bin/python3"
TOOL = Path(__file__).resolve().parent / "_kdumpfile_tool.py"
PANIC = "Kernel panic - not syncing"
TIMEOUT = 300
CATEGORIES = ("zero", "cache", "cache_private", "user", "free")
_REPORT = {"Pages filled with zero": "zero", "Non-private cache pages": "cache",
           "Private cache pages": "cache_private", "User process data pages": "user", "Free pages": "free"}


def _run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, **kw)


def read_vmcoreinfo(path: str | os.PathLike) -> dict[str, str]:
    """The VMCOREINFO note of an ELF vmcore, as key -> value."""
    from elftools.elf.elffile import ELFFile
    with open(path, "rb") as fh:
        elf = ELFFile(fh)
        for seg in elf.iter_segments():
            if seg.header.p_type != "PT_NOTE":
                continue
            for note in seg.iter_notes():
                if note["n_name"] == "VMCOREINFO":
                    desc = note["n_desc"]
                    return parse_vmcoreinfo(desc if isinstance(desc, str) else bytes(desc).decode("latin-1"))
    return {}


def parse_filter_report(text: str) -> dict[str, int]:
    """makedumpfile's "Excluded pages" report (--message-level 31) as counts."""
    out = {}
    for label, key in _REPORT.items():
        m = re.search(rf"{re.escape(label)}\s*:\s*0x([0-9a-fA-F]+)", text)
        if m:
            out[key] = int(m.group(1), 16)
    return out


def kdumpfile_probe(request: dict) -> dict:
    """Run _kdumpfile_tool.py under /usr/bin/python3 with `request`."""
    import tempfile
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(request, fh)
        name = fh.name
    try:
        p = _run([SYSTEM_PYTHON, "-I", str(TOOL), name])   # -I: not kdumpsim/ on sys.path (its elf.py)
    finally:
        os.unlink(name)
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or ["libkdumpfile probe failed"])[-1]}
    return json.loads(p.stdout)


def _log_check(path: Path, work: Path, result: dict) -> list[str] | None:
    mdf = shutil.which("makedumpfile")
    if mdf is None:
        result["errors"]["makedumpfile"] = "makedumpfile not installed"
        return None
    out = work / "dmesg.txt"
    out.unlink(missing_ok=True)
    p = _run([mdf, "--dump-dmesg", str(path), str(out)])
    lines = out.read_text(errors="replace").splitlines() if out.exists() else []
    result["log_lines"] = len(lines)
    result["log_readable"] = p.returncode == 0 and any(PANIC in line for line in lines)
    if p.returncode != 0:
        result["errors"]["dump_dmesg"] = (p.stdout + p.stderr).strip()[-500:]
    return lines


def _crash_log(path: Path, info: dict[str, str], result: dict) -> list[str] | None:
    if "SYMBOL(log_buf)" not in info:          # the 5.10+ ring: crash 8.0 reads only printk_log
        return None
    crash = shutil.which("crash")
    if crash is None:
        return None
    p = _run([crash, "--log", str(path)])
    lines = p.stdout.splitlines()
    result["crash_log"] = p.returncode == 0 and any(PANIC in line for line in lines)
    if not result["crash_log"]:
        result["errors"]["crash_log"] = (p.stdout + p.stderr).strip()[-500:]
    return lines


def _filter_check(path: Path, work: Path, result: dict) -> Path | None:
    mdf = shutil.which("makedumpfile")
    if mdf is None:
        return None
    out = work / "vmcore.d31"
    out.unlink(missing_ok=True)
    p = _run([mdf, "-c", "-d", "31", "--message-level", "31", str(path), str(out)])
    result["filter_counts"] = parse_filter_report(p.stdout + p.stderr)
    if p.returncode != 0 or not out.exists():
        result["errors"]["filter"] = (p.stdout + p.stderr).strip()[-500:]
        return None
    probe = kdumpfile_probe({"path": str(out)})
    if probe.get("error"):
        result["errors"]["filtered_open"] = probe["error"]
        return None
    result["filter_ok"] = True
    return out


def _pagetable_check(path: Path, info: dict[str, str], result: dict) -> None:
    """Walk init_top_pgt (read from the dump) for a kernel-text, a direct-map
    and a vmemmap address, and let libkdumpfile read the vmemmap one (its
    addrxlat walks there; it maps the other two linearly from the headers)."""
    try:
        uts = int(info["SYMBOL(init_uts_ns)"], 16)
        roots = int(info["SYMBOL(mem_section)"], 16)
        pgd = int(info["SYMBOL(init_top_pgt)"], 16)
        phys_base = int(info.get("NUMBER(phys_base)", "0"))
    except (KeyError, ValueError):
        result["errors"]["pagetables"] = "VMCOREINFO names no init_uts_ns / mem_section / init_top_pgt"
        return
    text_phys = lambda v: v - D.START_KERNEL_MAP + phys_base       # noqa: E731
    page_offset = roots & ~((1 << 39) - 1)           # the direct map's base (a 512 GiB slot)
    vmemmap = D.VMEMMAP_START_X86_64 + 0x100 * D.STRUCT_PAGE_SIZE
    probe = kdumpfile_probe({"path": str(path), "vtop": [[uts, 70], [vmemmap, 64]],
                             "walk": {"root": text_phys(pgd), "vaddrs": [uts, roots, vmemmap]}})
    if probe.get("error"):
        result["errors"]["pagetables"] = probe["error"]
        return
    bad = [r["error"] for r in probe["vtop"] + probe["walk"] if "error" in r]
    if bad:
        result["errors"]["pagetables"] = bad[0]
        return
    walked = [r["paddr"] for r in probe["walk"]]
    text = bytes.fromhex(probe["vtop"][0]["hex"])
    result["pagetables_ok"] = (b"Linux\0" in text and walked[0] == text_phys(uts)
                               and walked[1] == roots - page_offset)
    if not result["pagetables_ok"]:
        result["errors"]["pagetables"] = "the page tables map init_uts_ns or the direct map elsewhere"


def analyse_vmcore(path: str | os.PathLike, workdir: str | os.PathLike, run: CrashRun | None = None) -> dict:
    """Run the real tools on an ELF vmcore; see the module doc for the keys."""
    path, work = Path(path), Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"log_readable": False, "crash_log": None, "filter_ok": False,
                              "pagetables_ok": False, "analysable": False, "log_lines": 0,
                              "filter_counts": {}, "errors": {}}
    info = read_vmcoreinfo(path)
    if not info:
        result["errors"]["vmcoreinfo"] = "no VMCOREINFO note"
    lines = _log_check(path, work, result)
    _crash_log(path, info, result)
    filtered = _filter_check(path, work, result)
    if filtered is not None:
        filtered.unlink(missing_ok=True)              # only its existence and openability matter
    _pagetable_check(path, info, result)
    result["analysable"] = bool(result["log_readable"] and result["filter_ok"] and result["pagetables_ok"])
    if run is not None:
        from kdumpsim.firstkernel.printk import expected_dmesg
        want = expected_dmesg(run.machine)
        result["log_matches"] = lines is not None and lines == want
        exp = expected_filter(run)
        result["filter_matches"] = bool(result["filter_counts"]) and \
            all(result["filter_counts"].get(c) == len(exp[c]) for c in CATEGORIES)
    return result


def kdump_bitmaps(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """The two page bitmaps of a kdump-compressed file (makedumpfile
    diskdump_mod.h struct disk_dump_header: block_size at 428, sub_hdr_size at
    432, bitmap_blocks at 436; the bitmaps from block 1 + sub_hdr_size, the
    first (memory present) then the second (pages dumped)), one bool per pfn."""
    with open(path, "rb") as fh:
        head = fh.read(440)
        if head[:8] != b"KDUMP   ":
            raise ValueError(f"{path}: not a kdump-compressed file")
        block_size, sub_hdr, blocks = struct.unpack_from("<iiI", head, 428)
        fh.seek((1 + sub_hdr) * block_size)
        raw = np.frombuffer(fh.read(blocks * block_size), np.uint8)
    bits = np.unpackbits(raw, bitorder="little").astype(bool)
    half = len(bits) // 2
    return bits[:half], bits[half:]


# ------------------------------------------------------------------ the truth
def load_segments(run: CrashRun) -> list[tuple[int, int]]:
    """[p_paddr, p_paddr + p_memsz) of each PT_LOAD of the run's vmcore."""
    from kdumpsim.formats.elf import PT_LOAD
    return [(p.p_paddr, p.p_paddr + p.p_memsz) for p in run.vmcore.phdrs if p.p_type == PT_LOAD]


def dumped_pfns(run: CrashRun, whole: bool = False) -> np.ndarray:
    """Page frames makedumpfile sees in the dump's PT_LOADs (is_in_segs: the
    page's first byte inside a segment; `whole`: the page entirely inside, as
    its first bitmap, create_1st_bitmap, keeps them), sorted, each once."""
    parts = []
    for start, end in load_segments(run):
        first = -(-start // D.PAGE_SIZE)
        last = end // D.PAGE_SIZE if whole else -(-end // D.PAGE_SIZE)
        parts.append(np.arange(first, last, dtype=np.uint64))
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.uint64)


def expected_filter(run: CrashRun) -> dict[str, list[int]]:
    """Which dumped pages `makedumpfile -d 31` must exclude, by its report's
    category: free / cache / cache_private / user from the simulated struct
    page (page_classes), then zero: the remaining pages whose dumped content
    is all zeros (class zero, or written to zeros)."""
    from kdumpsim.formats.vmcore import dump_bytes
    k = run.machine.kernel_structs
    pfns = dumped_pfns(run)
    cls = k.page_classes(pfns)
    out = {"free": pfns[cls == FK.FREE], "cache": pfns[cls == FK.CACHE],
           "cache_private": pfns[cls == FK.CACHE_PRIVATE], "user": pfns[cls == FK.USER]}
    rest = pfns[cls >= FK.ZERO]
    touched = np.array(run.machine.memory.touched_pfns(), dtype=np.uint64)
    is_touched = np.isin(rest, touched)
    zero = set(int(p) for p in rest[(~is_touched) & (k.page_classes(rest) == FK.ZERO)])
    for p in rest[is_touched]:
        if not any(dump_bytes(run, int(p) << 12, D.PAGE_SIZE)):
            zero.add(int(p))
    result = {name: [int(p) for p in v] for name, v in out.items()}
    result["zero"] = sorted(zero)
    return result


if __name__ == "__main__":     # python -m kdumpsim.analysis VMCORE [WORKDIR]
    print(json.dumps(analyse_vmcore(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "."), indent=2))


# ------------------------------------------------------------------ per-run metric
# Columns analysis_record adds to a run's record (report.run_record) when an
# experiment asks for them (`analyse: true`).
ANALYSIS_COLUMNS = ("analysable", "log_readable", "log_intact", "filter_ok", "filter_exact", "pagetables_ok")


def analysis_record(run: CrashRun, workdir: str | os.PathLike) -> dict[str, Any]:
    """Write the run's vmcore to `workdir`, run the real tools on it, delete it:
    one flat row of booleans (ANALYSIS_COLUMNS). A run without a vmcore (the
    capture failed) analyses as nothing: every column False."""
    from kdumpsim.errors import NoVmcore
    from kdumpsim.formats.vmcore import write_vmcore
    work = Path(workdir) / f"worker-{os.getpid()}"    # the tools' outputs have fixed names: one dir per worker
    work.mkdir(parents=True, exist_ok=True)
    path = work / "run.vmcore"
    try:
        write_vmcore(run, path)
    except NoVmcore:
        return {c: False for c in ANALYSIS_COLUMNS}
    try:
        r = analyse_vmcore(path, work, run if run.machine.kernel_structs is not None else None)
    finally:
        path.unlink(missing_ok=True)
    return {"analysable": r["analysable"], "log_readable": r["log_readable"],
            "log_intact": bool(r.get("log_matches")), "filter_ok": r["filter_ok"],
            "filter_exact": bool(r.get("filter_matches")), "pagetables_ok": r["pagetables_ok"]}
