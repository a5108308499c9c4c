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

import numpy as np

from kdumpsim import defaults as D
from kdumpsim.crash.collector import DL_EXCLUDE_ZERO
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
    (makedumpfile: free, cache, user, zero) is no dump damage whatever DMA did to it.

    The collector is asked about each unit in file order (before every cycle
    is decided, makedumpfile's answers depend on that order); the dumped-RAM
    units are then compared all at once (_compare_in_place). The same answers
    as dump_corruption_per_page, the plain per-page comparison."""
    ram, backup = Tally(), Tally()
    v, copy = run.vmcore, run.copy
    units, settled = _dump_units(run)
    mdf_zero = settled and bool(copy.dump_level & DL_EXCLUDE_ZERO)
    excluded_hit = 0
    in_place = _Units()
    for chunk in v.chunks:
        origin = chunk.origin
        if origin != chunk.paddr:       # relocated data (the backup region): small, page by page
            for offset, src, truth_addr in _chunk_units(run, chunk, origin):
                excluded_hit += _plain_unit(run, settled, chunk, offset, src, truth_addr, backup)
            continue
        full: list[int] = []
        for offset, src, _ in _chunk_units(run, chunk, origin):
            n = min(PAGE - (src & (PAGE - 1)), chunk.offset + chunk.size - offset)
            if settled and n == PAGE and not src & (PAGE - 1):
                full.append(src >> PAGE_SHIFT)      # read times asked below, all at once (settled: any order)
            else:
                in_place.add(src, n, copy.read_time(offset) if copy.kept(offset) else None, False)
        for pfn, at in zip(full, copy.kept_read_times(full) if full else []):
            in_place.add(pfn << PAGE_SHIFT, PAGE, at, mdf_zero)
    excluded_hit += _compare_in_place(run, in_place, ram)
    if settled:
        units = copy.pages_read() - copy.zero_pages()
    return ram, backup, units, excluded_hit


def dump_corruption_per_page(run: CrashRun) -> tuple[Tally, Tally, int, int]:
    """dump_corruption the straightforward way: each unit read as the copy
    read it and compared with the truth's bytes, one by one (kept for the
    tests that pin dump_corruption's batched comparison to it)."""
    ram, backup = Tally(), Tally()
    units, settled = _dump_units(run)
    excluded_hit = 0
    for chunk in run.vmcore.chunks:
        tally = ram if chunk.origin == chunk.paddr else backup
        for offset, src, truth_addr in _chunk_units(run, chunk, chunk.origin):
            excluded_hit += _plain_unit(run, settled, chunk, offset, src, truth_addr, tally)
    if settled:
        units = run.copy.pages_read() - run.copy.zero_pages()
    return ram, backup, units, excluded_hit


def _dump_units(run: CrashRun) -> tuple[int, bool]:
    """(dumped units as far as known before the comparison, makedumpfile settled).
    Once every cycle is decided makedumpfile's answers no longer depend on
    the order they are asked in: a whole page is read once for both its
    all-zeros test and its comparison. Before (the capture stopped in a
    cycle's mem_map read), the order the per-page code asked in is kept."""
    copy = run.copy
    units = sum(-(-c.size // PAGE) for c in run.vmcore.chunks)
    mdf = copy.collector == "makedumpfile"
    settled = mdf and copy.settled()
    if mdf and not settled:
        units = copy.pages_read() - copy.zero_pages()
    return units, settled


def _plain_unit(run: CrashRun, settled: bool, chunk: Any, offset: int, src: int, truth_addr: int,
                tally: Tally) -> int:
    """Compare one unit as the copy read it with the truth into `tally`;
    1 if the collector left it out though a device wrote it."""
    copy, mem = run.copy, run.machine.memory
    n = min(PAGE - (src & (PAGE - 1)), chunk.offset + chunk.size - offset)
    if settled and chunk.origin == chunk.paddr and n == PAGE and not src & (PAGE - 1):
        got, when = copy.read_kept_page(src >> PAGE_SHIFT)
    elif copy.kept(offset):
        when = copy.read_time(offset)
        got = mem.read(src, n, when)
    else:
        got = None
    if got is None:
        return int(bool(device_deltas(run, src >> PAGE_SHIFT, 0, 1 << 62)))
    want = b"".join(truth_page(run, p)[max(0, truth_addr - (p << PAGE_SHIFT)):]
                    for p in range(truth_addr >> PAGE_SHIFT, ((truth_addr + n - 1) >> PAGE_SHIFT) + 1))
    want = want[:n]
    deltas = [d for p in {src >> PAGE_SHIFT, truth_addr >> PAGE_SHIFT}
              for d in device_deltas(run, p, 0, when)]
    tally.add(diff_bytes(got, want), deltas)
    return 0


COMPARE_ROWS = 512      # pages compared per numpy batch (three 2 MiB arrays): memory does not grow with the dump


class _Units:
    """Dumped-RAM units to compare, as parallel lists of plain values: the
    address, the bytes (within one page), the read time (None: not in the
    dump), makedumpfile's all-zeros test due. Nothing the garbage collector
    tracks is kept per unit, so holding a thousand costs it nothing."""

    def __init__(self) -> None:
        self.src: list[int] = []
        self.n: list[int] = []
        self.when: list[int | None] = []
        self.ztest: list[bool] = []

    def add(self, src: int, n: int, when: int | None, ztest: bool) -> None:
        self.src.append(src)
        self.n.append(n)
        self.when.append(when)
        self.ztest.append(ztest)


def _compare_in_place(run: CrashRun, units: _Units, ram: Tally) -> int:
    """Compare the dumped-RAM `units` with the truth into `ram`; return how
    many the collector left out though a device wrote them. From the write
    indices alone: a unit whose visible writes are the truth's cannot differ
    (only its all-zeros test needs the page); the rest are built over their
    base pages (computed together) and counted all at once. The zero tests
    made go to the collector."""
    mem = run.machine.memory
    w = _LogFacts(run)
    times, truthy = w.times, w.truthy
    excluded = 0
    rows: list[int] = []            # the units that need their pages built
    for i, (src, when, ztest) in enumerate(zip(units.src, units.when, units.ztest)):
        seqs = mem.seqs_of(src >> PAGE_SHIFT)
        if when is None:
            excluded += w.device_wrote(seqs)
        elif ztest or [s for s in seqs if times[s] <= when] != [s for s in seqs if truthy[s]]:
            rows.append(i)
    zero_tests: tuple[list[int], list[int], list[bool]] = ([], [], [])
    for lo in range(0, len(rows), COMPARE_ROWS):
        excluded += _compare_rows(mem, w, units, rows[lo:lo + COMPARE_ROWS], ram, zero_tests)
    if zero_tests[0]:
        run.copy.remember_zero_tests(*zero_tests)
    return excluded


class _LogFacts:
    """What the comparison asks of each logged write, looked up once per run:
    its time, is it the truth's (is_truth), is it a device's after the panic."""

    def __init__(self, run: CrashRun):
        log, names = run.machine.memory.log, run.device_names
        self.log = log
        self.times = [w.time for w in log]
        self.truthy = [is_truth(w) for w in log]
        self.device = [w.time > 0 and w.actor in names for w in log]

    def device_wrote(self, seqs: list[int]) -> int:
        """1 if a device wrote any of `seqs` after the panic (device_deltas(pfn, 0, 1 << 62))."""
        device, times = self.device, self.times
        return int(any(device[s] and times[s] <= 1 << 62 for s in seqs))

    def parts(self, pfn: int, seqs: list[int]) -> list[tuple[str, int, int]]:
        """(actor, bytes within page `pfn`, time) of the device writes among `seqs` after the panic."""
        pstart, log, parts = pfn << PAGE_SHIFT, self.log, []
        for s in seqs:
            if self.device[s]:
                w = log[s]
                parts.append((w.actor, min(w.addr + w.length, pstart + PAGE) - max(w.addr, pstart), w.time))
        return parts


def _compare_rows(mem: PhysicalMemory, w: _LogFacts, units: _Units, rows: list[int],
                  ram: Tally, zero_tests: tuple[list[int], list[int], list[bool]]) -> int:
    """One batch of _compare_in_place: the pages of units `rows` as the copy
    got them and as the truth has them, one row each, compared at once."""
    times, truthy = w.times, w.truthy
    pfns = [units.src[u] >> PAGE_SHIFT for u in rows]
    base = mem.base_array(pfns)
    got = base.copy()
    # Each page is copied into its row as it is built (nothing held per page).
    # `base` becomes the truth's pages, row by row: a row's base is read before its row is replaced.
    got_buf, truth_buf = memoryview(got.reshape(-1)), memoryview(base.reshape(-1))
    for i, (pfn, u) in enumerate(zip(pfns, rows)):
        when, seqs, at = units.when[u], mem.seqs_of(pfn), i * PAGE
        seen = [s for s in seqs if times[s] <= when]
        truth = [s for s in seqs if truthy[s]]
        if seen:
            got_buf[at:at + PAGE] = mem.compose(pfn, seen, base[i].tobytes)
        if truth == seen:
            truth_buf[at:at + PAGE] = got_buf[at:at + PAGE]
        elif truth:
            truth_buf[at:at + PAGE] = mem.compose(pfn, truth, base[i].tobytes)
    differ = got != base
    counts = differ.view(np.uint8).sum(axis=1, dtype=np.int32).tolist()
    zero = (~got.view(np.uint64).any(axis=1)).tolist()
    excluded = 0
    for i, (pfn, u) in enumerate(zip(pfns, rows)):
        when, seqs = units.when[u], mem.seqs_of(pfn)
        if units.ztest[u]:
            zero_tests[0].append(pfn)
            zero_tests[1].append(when)
            zero_tests[2].append(zero[i])
            if zero[i]:         # read as all zeros: not in the dump
                excluded += w.device_wrote(seqs)
                continue
        n = units.n[u]
        off = units.src[u] & (PAGE - 1)
        nbytes = counts[i] if n == PAGE else int(np.count_nonzero(differ[i, off:off + n]))
        if nbytes:
            ram.add_parts(nbytes, w.parts(pfn, [s for s in seqs if times[s] <= when]))
    return excluded


def dma_hits(run: CrashRun, after: int = 0) -> dict[str, dict[str, int]]:
    """Bytes each device wrote after time `after` (the panic), per region of
    the capture path: a write is credited to every region it overlaps. A
    write between two consecutive region edges (run.region_edges) lies in
    one region: found by one search for all of them, each such stretch's
    region looked up once; only writes across an edge are split by regions_of.
    The same answer as dma_hits_per_write."""
    names = run.device_names
    writes = [w for w in run.machine.memory.log if w.time > after and w.length and w.actor in names]
    hits: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    if writes:
        edges = np.array(run.region_edges(), dtype=np.uint64)
        addrs = np.array([w.addr for w in writes], dtype=np.uint64)
        first = np.searchsorted(edges, addrs, side="right").tolist()
        last = np.searchsorted(edges, addrs + np.array([w.length - 1 for w in writes], dtype=np.uint64),
                               side="right").tolist()
        stretch: dict[int, str] = {}        # edge index -> the region of the stretch after it
        split: dict[tuple[int, int], list[tuple[str, int]]] = {}     # a ring's slots are written again and again
        for w, k, k_last in zip(writes, first, last):
            if k == k_last:
                region = stretch.get(k)
                if region is None:
                    region = stretch[k] = run.regions_of(w.addr, 1)[0][0]
                hits[region][w.actor] += w.length
                continue
            where = split.get((w.addr, w.length))
            if where is None:
                where = split[(w.addr, w.length)] = run.regions_of(w.addr, w.length)
            for region, nbytes in where:
                hits[region][w.actor] += nbytes
    return {r: dict(sorted(d.items())) for r, d in sorted(hits.items())}


def dma_hits_per_write(run: CrashRun, after: int = 0) -> dict[str, dict[str, int]]:
    """dma_hits the straightforward way, write by write through regions_of
    (kept for the test that pins dma_hits to it)."""
    hits: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for w in run.machine.memory.log:
        if w.time > after and w.actor in run.device_names:
            for region, nbytes in run.regions_of(w.addr, w.length):
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
