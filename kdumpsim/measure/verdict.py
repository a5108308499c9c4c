"""Is the dump still analysable? Decided from the model, without writing a vmcore (issue #15).

The crash tools (crash, makedumpfile --dump-dmesg, libkdumpfile, drgn) read a
few of the first kernel's structures to make sense of a dump: VMCOREINFO
(every symbol and offset), the page tables (every kernel-virtual read),
mem_section (where mem_map is), node_data / pglist_data (the nodes), the
printk log (and the .data variables that point at it), init_uts_ns, and the
crashing task's stack (the backtrace). Where kdumpsim.firstkernel puts them:
FirstKernel.regions(); VMCOREINFO at Machine.vmcoreinfo_addr; the stack at
the panicking CPU's saved rsp (THREAD_SIZE 16 KiB on x86_64).

A run's dump is analysable when a collector produced it and none of the
words in use in these structures (non-zero in the truth) differ from the truth (RAM at the panic, plus the crashing kernel's own
writes) at the time the collector read them: the capture kernel read
VMCOREINFO at vmcore_init (it becomes part of the ELF headers); the
collector read the rest at its read times (kdumpsim.crash.collector). With
makedumpfile a structure page it excluded (DMA into mem_map made it look
free, cache or user) is also missing from the dump.

mem_map itself is not in the list: a changed struct page makes filtering
wrong (`mem_map_changed`, `keep_set_changed`) but the dump still analyses,
as the real tools show (docs/SOURCES.md §16).
"""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING, Any

import numpy as np

from kdumpsim import defaults as D
from kdumpsim.firstkernel.mm import SECTION_MEMMAP
from kdumpsim.formats import elf
from kdumpsim.machine.ram import PAGE_SHIFT
from kdumpsim.measure.metrics import is_truth
from kdumpsim.names import cpu_of

if TYPE_CHECKING:
    from kdumpsim.crash.run import CrashRun

PAGE = D.PAGE_SIZE
THREAD_SIZE = 16 * 1024          # x86_64 THREAD_SIZE (arch/x86/include/asm/page_64_types.h, KASAN off)
STRUCTURES = ("page_tables", "mem_section", "node_data", "pglist_data", "kernel_data", "init_uts_ns",
              "printk_ringbuffer", "printk_descs", "printk_infos", "log_buf")
VERDICT_COLUMNS = ("analysable_model", "structures_changed", "mem_map_changed")


def structure_ranges(run: CrashRun) -> list[tuple[int, int, str]]:
    """[start, end, name] of each structure the crash tools read (module doc)."""
    m = run.machine
    k = m.kernel_structs
    if k is None:
        return []
    out = [r for r in k.regions() if r[2] in STRUCTURES]
    me = run.cpus[m.cfg.cpus.panic_cpu]
    rsp = me.regs.get(elf.PRSTATUS["x86_64"].reg_names[19], 0)
    sp = rsp - m.page_offset
    if 0 <= sp < m.ram_ranges[-1][1]:
        out.append((sp, (sp | (THREAD_SIZE - 1)) + 1, "stack"))       # rsp up to the stack's top
    return sorted(out)


LOG_RECORDS = ("printk_descs", "printk_infos", "log_buf")
PRINTK_INFO_SIZE, TEXT_LEN = 88, 16        # SIZE(printk_info), OFFSET(printk_info.text_len) (VMCOREINFO, 6.1)


def _read_ranges(run: CrashRun) -> list[tuple[int, int, str]]:
    """structure_ranges, the log's record areas narrowed to the crash's own
    records (what the panicking CPU logged: the panic banner, stack and the
    shootdown lines). A boot record DMA garbled prints as garbage, but the
    reader walks on to the crash's records (makedumpfile printk.c
    dump_lockless_dmesg reads each descriptor, its info and text in turn)."""
    out = []
    for start, end, name in structure_ranges(run):
        if name not in LOG_RECORDS:
            out.append((start, end, name))
            continue
        for w in run.machine.memory.writes_in(start, end, since=-1):       # from the panic on
            if cpu_of(w.actor) is None:
                continue
            lo, hi = max(start, w.addr), min(end, w.addr + w.length)
            if name == "printk_infos":           # (the lockless ring's; 4.18 has none)
                # Of a printk_info the reader takes text_len (how much text to print); seq,
                # ts_nsec and caller_id only label the line (printk.c dump_record).
                first = start + (lo - start) // PRINTK_INFO_SIZE * PRINTK_INFO_SIZE
                out += [(r + TEXT_LEN, r + TEXT_LEN + 2, name) for r in range(first, hi, PRINTK_INFO_SIZE)
                        if lo <= r + TEXT_LEN < hi]
            else:
                out.append((lo, hi, name))
    return out


def _offset_of(run: CrashRun, addr: int) -> int | None:
    """The vmcore file offset holding physical address addr (None: not dumped)."""
    if run.vmcore is None:
        return None
    chunks = [c for c in run.vmcore.chunks if c.origin == c.paddr]
    starts = [c.paddr for c in chunks]
    i = bisect.bisect_right(starts, addr) - 1
    if i < 0 or addr >= chunks[i].paddr + chunks[i].size:
        return None
    return chunks[i].offset + addr - chunks[i].paddr


def _changed(run: CrashRun, lo: int, hi: int, at: int) -> bool:
    """A word of [lo, hi) (within one page) that holds something in the truth
    differs from it at time `at`. The tools read the words in use: a table's
    present entries, the log's records, the set fields; a zero word is an
    absent entry, an unused slot or free text space (the first kernel writes
    every word it uses, docs/SOURCES.md §16)."""
    mem = run.machine.memory
    pfn = lo >> PAGE_SHIFT
    a, b = (lo - (pfn << PAGE_SHIFT)) & ~7, -(-(hi - (pfn << PAGE_SHIFT)) // 8) * 8
    got = np.frombuffer(bytes(mem.page(pfn, at)[a:b]), np.uint8)
    want = np.frombuffer(bytes(mem.page(pfn, None, keep=is_truth)[a:b]), np.uint8)
    in_use = np.repeat(want.view("<u8") != 0, 8)
    lo_i, hi_i = lo - (pfn << PAGE_SHIFT) - a, hi - (pfn << PAGE_SHIFT) - a
    return bool(((got != want) & in_use)[lo_i:hi_i].any())


def _text_cut(run: CrashRun, lo: int, hi: int, at: int) -> bool:
    """printk_info.text_len now below the truth: the record's text is cut. A
    larger one is capped at the text block (printk.c dump_record "handle
    truncated messages"): the text still prints whole."""
    mem = run.machine.memory
    got = int.from_bytes(mem.read(lo, 2, at), "little")
    want = int.from_bytes(bytes(mem.page(lo >> PAGE_SHIFT, None, keep=is_truth))[lo % PAGE:lo % PAGE + 2], "little")
    return got < want


def structures_changed(run: CrashRun) -> list[str]:
    """Names of the structures that changed before they were read, or that the
    collector left out of the dump."""
    mem, copy = run.machine.memory, run.copy
    bad: set[str] = set()
    vi = run.machine.vmcoreinfo_addr
    read_at = run.phase.get("vmcore_init")
    if vi is not None and read_at is not None and _changed(run, vi, vi + PAGE, read_at):
        bad.add("vmcoreinfo")
    for start, end, name in _read_ranges(run):
        pages = set(mem.touched_in(start, end))
        if copy.collector == "makedumpfile":       # excluded through a changed struct page
            pages |= {p for p in copy.overrides if start >> PAGE_SHIFT <= p < -(-end >> PAGE_SHIFT)}
        for pfn in sorted(pages):
            lo, hi = max(start, pfn << PAGE_SHIFT), min(end, (pfn + 1) << PAGE_SHIFT)
            off = _offset_of(run, lo)
            if off is None:
                continue
            missing = copy.collector == "makedumpfile" and not copy.read_by_makedumpfile(pfn)
            check = _text_cut if name == "printk_infos" else _changed
            if missing or check(run, lo, hi, copy.read_time(off)):
                bad.add(name)
                break
    return sorted(bad)


def verdict_record(run: CrashRun) -> dict[str, Any]:
    """The VERDICT_COLUMNS of one run. No dump (the capture failed): not
    analysable; a model without the first kernel's structures: None (unknown)."""
    copy = run.copy
    mm_changed = bool(copy is not None and getattr(copy, "struct_pages_changed", 0))
    if run.machine.kernel_structs is None:
        return {"analysable_model": None, "structures_changed": "", "mem_map_changed": None}
    if copy is None or run.capture_corrupted:
        return {"analysable_model": False, "structures_changed": "no_dump", "mem_map_changed": mm_changed}
    bad = structures_changed(run)
    if copy.collector == "dd":
        mm_changed = _memmap_changed_dd(run)
    return {"analysable_model": not bad, "structures_changed": ",".join(bad), "mem_map_changed": mm_changed}


def _memmap_changed_dd(run: CrashRun) -> bool:
    """dd: some struct page differs from the truth where the copy read it."""
    k, mem = run.machine.kernel_structs, run.machine.memory
    if k is None or k.memmap is None:
        return False
    start, end = k.memmap, k.memmap + k.nsections * SECTION_MEMMAP
    for pfn in mem.touched_in(start, end):
        off = _offset_of(run, pfn << PAGE_SHIFT)
        if off is not None and _changed(run, pfn << PAGE_SHIFT, (pfn + 1) << PAGE_SHIFT, run.copy.read_time(off)):
            return True
    return False
