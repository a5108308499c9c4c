"""Outcome and corruption metrics of a finished run (DESIGN.md "Truth and measurement").

Three views of a byte: the truth (RAM at the panic, plus what the crashing
kernel itself wrote on the way down: crash notes, VMCOREINFO), its value when
the capture path used it, and its value when the dump copy read it. Only
pages something wrote are compared; every other page is equal by
construction, which is what keeps a 1 TiB machine as cheap as a 1 GiB one.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from kdumpsim import defaults as D
from kdumpsim.crash.integrity import device_deltas, diff_bytes, segment_changes
from kdumpsim.machine.ram import PAGE_SHIFT, Delta, WriteRecord
from kdumpsim.names import CMA, cpu_of

if TYPE_CHECKING:
    from kdumpsim.crash.run import CrashRun
    from kdumpsim.machine.ram import PhysicalMemory

PAGE = D.PAGE_SIZE


def is_truth(d: Delta | WriteRecord) -> bool:
    """Writes that belong to the state we want dumped: before the panic, or by
    a CPU of the crashing kernel (its crash notes, VMCOREINFO, log lines)."""
    if d.time <= 0:
        return True
    is_cpu = _IS_CPU.get(d.actor)
    if is_cpu is None:
        is_cpu = _IS_CPU[d.actor] = cpu_of(d.actor) is not None
    return is_cpu


_IS_CPU: dict[str, bool] = {}       # actor -> is it a CPU (cpu_of parses the name)


def truth_page(run: CrashRun, pfn: int) -> bytes:
    return run.machine.memory.page(pfn, None, keep=is_truth)


class Tally:
    """Corrupted bytes/pages of one region, and who wrote them when."""

    def __init__(self) -> None:
        self.bytes = 0
        self.pages = 0
        self.writers: dict[str, dict[str, int]] = {}

    def add(self, nbytes: int, deltas: list[Delta]) -> None:
        self.add_parts(nbytes, [(d.actor, len(d.data), d.time) for d in deltas] if nbytes else [])

    def add_parts(self, nbytes: int, parts: list[tuple[str, int, int]]) -> None:
        """Like add, with each write as (actor, its bytes in the page, time)."""
        if not nbytes:
            return
        self.bytes += nbytes
        self.pages += 1
        for actor, length, time in parts:
            w = self.writers.setdefault(actor, {"bytes": 0, "first_ns": time, "last_ns": time})
            w["bytes"] += length
            w["first_ns"] = min(w["first_ns"], time)
            w["last_ns"] = max(w["last_ns"], time)

    def as_dict(self) -> dict[str, Any]:
        return {"bytes": self.bytes, "pages": self.pages, "writers": dict(sorted(self.writers.items()))}


def segment_corruption(run: CrashRun, name: str, at: int) -> Tally:
    """Bytes of a loaded segment that differ from what kexec loaded, at time `at`."""
    tally = Tally()
    for nbytes, deltas in segment_changes(run, name, at):
        tally.add(nbytes, deltas)
    return tally


def _chunk_units(run: CrashRun, chunk: Any, origin: int) -> Iterator[tuple[int, int, int]]:
    """(file offset, source address, truth address) of each page-sized unit of a
    chunk that could differ from the truth."""
    mem = run.machine.memory
    if origin == chunk.paddr:
        for pfn in mem.written_by(run.device_names, 0, chunk.paddr, chunk.paddr + chunk.size):
            a = max(pfn << PAGE_SHIFT, chunk.paddr)
            yield chunk.offset + (a - chunk.paddr), a, a
    else:   # relocated data (the backup region): compare it all, it is small
        for off in range(0, chunk.size, PAGE):
            yield chunk.offset + off, chunk.paddr + off, origin + off


def dump_corruption(run: CrashRun) -> tuple[Tally, Tally, int, int]:
    """(dumped RAM tally, backup-region tally, dumped units, excluded pages DMA
    wrote) for the copy that ran. A page the collector left out of the dump
    (makedumpfile: free, cache, user, zero) is no dump damage whatever DMA did to it."""
    ram, backup = Tally(), Tally()
    v, copy, mem = run.vmcore, run.copy, run.machine.memory
    units = sum(-(-c.size // PAGE) for c in v.chunks)
    mdf = copy.collector == "makedumpfile"
    # Once every cycle is decided makedumpfile's answers no longer depend on
    # the order they are asked in: a whole page is read once for both its
    # all-zeros test and its comparison. Before (the capture stopped in a
    # cycle's mem_map read), the order the per-page code asked in is kept.
    settled = mdf and copy.settled()
    if mdf and not settled:
        units = copy.pages_read() - copy.zero_pages()
    excluded_hit = 0
    in_place: list[tuple[int, int, list[int], list[int]]] = []
    for chunk in v.chunks:
        origin = chunk.origin
        tally = ram if origin == chunk.paddr else backup
        for offset, src, truth_addr in _chunk_units(run, chunk, origin):
            n = min(PAGE - (src & (PAGE - 1)), chunk.offset + chunk.size - offset)
            if settled and origin == chunk.paddr and n == PAGE and not src & (PAGE - 1):
                got, when = copy.read_kept_page(src >> PAGE_SHIFT)
            elif copy.kept(offset):
                when = copy.read_time(offset)
                if src == truth_addr:       # dumped RAM: compared below, every page at once
                    seen, truth = _views(mem, src >> PAGE_SHIFT, when)
                    if seen != truth:       # else the copy saw exactly the truth's writes: nothing differs
                        in_place.append((src, n, seen, truth))
                    continue
                got = mem.read(src, n, when)
            else:
                got = None
            if got is None:
                excluded_hit += bool(device_deltas(run, src >> PAGE_SHIFT, 0, 1 << 62))
                continue
            want = b"".join(truth_page(run, p)[max(0, truth_addr - (p << PAGE_SHIFT)):]
                            for p in range(truth_addr >> PAGE_SHIFT, ((truth_addr + n - 1) >> PAGE_SHIFT) + 1))
            want = want[:n]
            deltas = [d for p in {src >> PAGE_SHIFT, truth_addr >> PAGE_SHIFT}
                      for d in device_deltas(run, p, 0, when)]
            tally.add(diff_bytes(got, want), deltas)
    bases = mem.base_pages([src >> PAGE_SHIFT for src, _, _, _ in in_place])
    for (src, n, seen, truth), base in zip(in_place, bases):
        ram.add_parts(*_unit_in_place(run, src, n, seen, truth, base))
    if settled:
        units = copy.pages_read() - copy.zero_pages()
    return ram, backup, units, excluded_hit


def _views(mem: PhysicalMemory, pfn: int, when: int) -> tuple[list[int], list[int]]:
    """The writes of page `pfn` the copy saw at `when`, and the truth's (log indices)."""
    log, seqs = mem.log, mem.seqs_of(pfn)
    return [s for s in seqs if log[s].time <= when], [s for s in seqs if is_truth(log[s])]


def _unit_in_place(run: CrashRun, src: int, n: int, seen: list[int], truth: list[int],
                   base: bytes) -> tuple[int, list[tuple[str, int, int]]]:
    """(bytes that differ, the device writes behind them) for the `n` bytes at
    `src` (within one page, whose base content is `base`) that the copy read
    with the writes `seen` visible, against the truth's writes there: the
    same as comparing mem.read(src, n, when) with truth_page, both pages
    built from one list of the page's writes and one base page."""
    mem = run.machine.memory
    log = mem.log
    pfn = src >> PAGE_SHIFT
    off = src & (PAGE - 1)
    nbytes = diff_bytes(mem.compose(pfn, seen, lambda: base)[off:off + n],
                        mem.compose(pfn, truth, lambda: base)[off:off + n])
    if not nbytes:
        return 0, []
    names, pstart = run.device_names, pfn << PAGE_SHIFT
    parts = []
    for s in seen:
        w = log[s]
        if w.time > 0 and w.actor in names:
            parts.append((w.actor, min(w.addr + w.length, pstart + PAGE) - max(w.addr, pstart), w.time))
    return nbytes, parts


def dma_hits(run: CrashRun, after: int = 0) -> dict[str, dict[str, int]]:
    """Bytes each device wrote after time `after` (the panic), per region of
    the capture path: a write is credited to every region it overlaps."""
    hits: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    regions: dict[tuple[int, int], list[tuple[str, int]]] = {}     # a ring's slots are written again and again
    for w in run.machine.memory.log:
        if w.time > after and w.actor in run.device_names:
            where = regions.get((w.addr, w.length))
            if where is None:
                where = regions[(w.addr, w.length)] = run.regions_of(w.addr, w.length)
            for region, nbytes in where:
                hits[region][w.actor] += nbytes
    return {r: dict(sorted(d.items())) for r, d in sorted(hits.items())}


def missing_cpus(run: CrashRun, saved: list[int]) -> dict[int, str]:
    """Each CPU whose registers the dump lacks, and why: it never answered the
    NMI (no note written), or it did and DMA overwrote its note."""
    if run.vmcore is None:
        return {}
    return {c.id: "never_answered" if c.saved_at is None else "note_overwritten"
            for c in run.cpus if c.id not in saved}


def notes_in_dump(run: CrashRun) -> list[int]:
    """CPU ids whose crash note made it into /proc/vmcore."""
    if run.vmcore is None:
        return []
    kept = set(run.vmcore.note_sources)
    return [c.id for c in run.cpus if c.note_addr in kept]


def finish(run: CrashRun) -> None:
    """Decide the outcome and fill run.metrics."""
    end = run.env.now
    boot_end = run.phase.get("capture_boot_end", end)
    regions: dict[str, Any] = {}
    for name in ("kernel", "initrd", "params", "purgatory", "elfcorehdr"):
        at = {"purgatory": run.phase.get("purgatory_start", end),
              "elfcorehdr": run.phase.get("vmcore_init", end)}.get(name, boot_end)
        if run.capture_mem is not None and name in ("kernel", "initrd", "params"):
            at = min(at, run.capture_mem.consumed_at(name))     # consumed then; later writes hit free memory
        regions[name] = segment_corruption(run, name, at).as_dict()
    saved = notes_in_dump(run)
    dumped_units, excluded_hit = 0, 0
    if run.copy is not None:
        ram, backup, dumped_units, excluded_hit = dump_corruption(run)
        regions["dumped_backup"], regions["dumped_ram"] = backup.as_dict(), ram.as_dict()
    bad_pages = regions.get("dumped_ram", {}).get("pages", 0) + regions.get("dumped_backup", {}).get("pages", 0)
    missing = missing_cpus(run, saved)
    run.outcome = _outcome(run, list(missing), bad_pages)
    jump = run.phase.get("purgatory_end")
    run.metrics = {
        "outcome": run.outcome,
        "detected": run.outcome == "purgatory_mismatch",
        "purgatory": run.purgatory_result,
        "vmcore_error": run.vmcore_error,
        "cpus_saved": len(saved),
        "cpus_missing": sorted(missing),
        "cpus_missing_why": {str(c): why for c, why in sorted(missing.items())},
        "corrupted_bytes": sum(r["bytes"] for r in regions.values()),
        "regions": regions,
        "dump_pages": dumped_units,
        "dump_pages_corrupted": bad_pages,
        "dump_fidelity": (1 - bad_pages / dumped_units) if dumped_units else None,
        "collector": collector_metrics(run, excluded_hit),
        "dma_hits": dma_hits(run),
        # The CMA area is the capture kernel's RAM from the jump on: what landed there since.
        "cma_bytes_after_jump": (sum(dma_hits(run, jump).get(CMA, {}).values())
                                 if jump is not None and run.machine.cma else 0),
        "dma": {e.name: {"kind": e.kind, "placement": e.spec.placement.mode, "writes": e.writes,
                         "bytes": e.bytes_written, "faults": e.blocked, "to_nowhere": e.nowhere,
                         "stopped_ns": e.stopped_at, "stop_reason": e.stop_reason} for e in run.engines},
        # What DMA hit in the capture kernel's memory while it was in use (kdumpsim.crash.capturemem).
        "capture_memory_hits": dict(sorted(run.capture_mem.hits.items())) if run.capture_mem is not None else {},
        "capture_oom": run.capture_mem.oom if run.capture_mem is not None else None,
        "timing_profile": run.timing.profile,
        "phase_ns": dict(run.phase),
        "end_ns": end,
    }


def collector_metrics(run: CrashRun, excluded_hit: int) -> dict[str, Any]:
    """Which collector ran and what its filtering did (kdumpsim.crash.collector):
    pages it left out, DMA-written pages among them (no dump damage), and
    struct pages DMA changed before makedumpfile read them (which pages it kept)."""
    cap = run.machine.cfg.capture
    out: dict[str, Any] = {"name": cap.collector, "dump_level": cap.dump_level if cap.collector == "makedumpfile" else None,
                           "pages_excluded": 0, "excluded_pages_hit": excluded_hit,
                           "struct_pages_changed": 0, "keep_set_changed": 0}
    copy = run.copy
    if copy is not None and copy.collector == "makedumpfile":
        dumped = copy.in_segs(0, copy.spans[-1][1]) if copy.spans else 0
        out.update(pages_excluded=int(dumped - copy.pages_read() + copy.zero_pages()),
                   struct_pages_changed=copy.struct_pages_changed, keep_set_changed=copy.keep_set_changed())
    return out


def _outcome(run: CrashRun, missing: list[int], bad_pages: int) -> str:
    if run.purgatory_result == "mismatch":
        return "purgatory_mismatch"
    if run.capture_corrupted:
        return "capture_kernel_corrupted"
    if run.capture_stopped == "capture_oom":
        return "capture_oom"
    if run.capture_crashed is not None:
        return "capture_kernel_crashed"
    if run.vmcore is None:
        return "vmcore_unavailable"
    if missing:
        return "cpu_state_missing"
    if bad_pages or (run.capture_mem is not None and run.capture_mem.dump_file_damage):
        return "ok_dump_corrupted"
    return "ok"
