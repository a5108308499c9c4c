"""One simulated crash, end to end: kexec load, panic, NMI shootdown,
purgatory, capture kernel, dump copy — with DMA engines writing throughout.

    run = run_crash(model, seed)     # a CrashRun, finished (kdumpsim.measure.simulate also measures it)
    run.trace, run.phase, run.machine.memory

Simulated time is integer nanoseconds; 0 is the panic; kexec -p happened
at boot (-1 s in the trace).
"""

from __future__ import annotations

import bisect
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import simpy

from kdumpsim.config.model import ModelConfig, TimingSpec
from kdumpsim.crash.capture import capture_kernel
from kdumpsim.crash.cpu import CpuState, crash_notes_memory_init, machine_crash_shutdown, make_cpus
from kdumpsim.crash.devices import make_engines
from kdumpsim.crash.dma import DmaEngine
from kdumpsim.crash.purgatory import purgatory, relocate_2004
from kdumpsim.firstkernel import printk, vmcoreinfo
from kdumpsim.formats.vmcorefile import VmcoreLayout
from kdumpsim.kexec import load_capture_kernel
from kdumpsim.kexec.load import KEXEC_LOAD_TIME, KexecImage
from kdumpsim.machine.layout import Machine
from kdumpsim.names import CMA, FIRST_KERNEL_RAM, KEXEC, PHASES, PURGATORY, RESERVATION_FREE
from kdumpsim.trace.events import Trace


@dataclass
class CrashRun:
    machine: Machine
    env: simpy.Environment
    trace: Trace
    image: KexecImage = None  # type: ignore[assignment]
    cpus: list[CpuState] = field(default_factory=list)
    engines: list[DmaEngine] = field(default_factory=list)
    phase: dict[str, int] = field(default_factory=dict)
    waiting_for_crash_ipi: int = 0
    purgatory_result: str | None = None           # ok | mismatch | skipped | none (2004)
    hash_times: dict[str, tuple[int, int | None]] = field(default_factory=dict)
    iommu_state: str = "old_tables"                # old_tables -> copied | off | fresh (capture kernel IOMMU init)
    vmcore: VmcoreLayout | None = None
    vmcore_error: str | None = None
    copy: Any = None                               # capture.VmcoreCopy once the dump copy starts
    capture_corrupted: dict[str, int] = field(default_factory=dict)
    capture_mem: Any = None                        # capturemem.CaptureMemory once the capture kernel runs
    capture_crashed: str | None = None             # what DMA hit that crashed the capture kernel
    capture_stopped: str | None = None             # capture_kernel_crashed | capture_oom
    path: simpy.Process | None = None              # the crash path's process (stopped by stop_capture)
    outcome: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    _regions: list[tuple[int, int, str]] = field(default_factory=list)
    _region_starts: list[int] = field(default_factory=list)
    _reserved: list[tuple[int, int]] = field(default_factory=list)
    _plain_edges: list[int] = field(default_factory=list)

    @property
    def timing(self) -> TimingSpec:
        return self.machine.cfg.timing

    device_names: set[str] = field(default_factory=set)

    def stop_capture(self, why: str) -> None:
        """The capture kernel stops now (crashed, or out of memory): the crash path ends."""
        if self.capture_stopped is not None:
            return
        self.capture_stopped = why
        if self.path is not None and self.path.is_alive and self.env.active_process is not self.path:
            self.path.interrupt(why)

    def mark(self, phase: str, actor: str, **details: Any) -> None:
        """A phase of the crash path reached now: one name (names.PHASES) in
        run.phase, the trace and the results' t_<phase> columns."""
        assert phase in PHASES, phase
        self.phase[phase] = self.env.now
        self.trace(self.env.now, actor, phase, **details)

    @property
    def seed(self) -> int:
        return self.machine.seed

    def region_of(self, addr: int) -> str:
        """Which part of the capture path an address belongs to."""
        return self.regions_of(addr, 1)[0][0]

    def regions_of(self, addr: int, size: int) -> list[tuple[str, int]]:
        """Every region [addr, addr+size) overlaps, with the bytes in each, in address order."""
        out: list[tuple[str, int]] = []
        pos, end = addr, addr + size
        i = max(0, bisect.bisect_right(self._region_starts, addr) - 1)
        regions = self._regions
        if size > 0:     # the common cases, as the walk below finds them: one region, or plain RAM
            j = i + 1 if i < len(regions) and regions[i][1] <= addr else i
            if j < len(regions) and regions[j][0] <= addr:
                if regions[j][1] >= end:
                    return [(regions[j][2], size)]
            elif (j == len(regions) or regions[j][0] >= end) and self._plain_boundary(addr, end) == end:
                return [(self._plain_region(addr), size)]
        while pos < end:
            while i < len(self._regions) and self._regions[i][1] <= pos:
                i += 1
            if i < len(self._regions) and self._regions[i][0] <= pos:
                stop, name = min(end, self._regions[i][1]), self._regions[i][2]
            else:
                nxt = self._regions[i][0] if i < len(self._regions) else end
                stop, name = min(end, nxt), self._plain_region(pos)
                stop = min(stop, self._plain_boundary(pos, stop))
            if out and out[-1][0] == name:
                out[-1] = (name, out[-1][1] + stop - pos)
            else:
                out.append((name, stop - pos))
            pos = stop
        return out

    def region_edges(self) -> list[int]:
        """Sorted addresses where regions_of's answer can change: every region's
        start and end, every reservation and CMA edge. A range between two
        consecutive edges lies in one region (regions_of gives it whole)."""
        return sorted({e for s, t, _ in self._regions for e in (s, t)} | set(self._plain_edges))

    def _plain_region(self, addr: int) -> str:
        if any(s <= addr < e for s, e in self._reserved):
            return RESERVATION_FREE
        cma = self.machine.cma
        if cma is not None and cma[0] <= addr < cma[1]:
            return CMA
        return FIRST_KERNEL_RAM

    def _plain_boundary(self, pos: int, stop: int) -> int:
        """The first reservation or CMA edge in (pos, stop)."""
        i = bisect.bisect_right(self._plain_edges, pos)
        return self._plain_edges[i] if i < len(self._plain_edges) and self._plain_edges[i] < stop else stop

    def _index_regions(self) -> None:
        regions = [(s.start, s.end, s.name) for s in self.image.segments]
        regions += [(a, a + self.machine.crash_note_size, "crash_notes")
                    for a in self.machine.crash_notes + self.machine.hotplug_notes]
        if self.machine.vmcoreinfo_addr is not None:
            regions.append((self.machine.vmcoreinfo_addr, self.machine.vmcoreinfo_addr + 4096, "vmcoreinfo"))
        if self.machine.kernel_structs is not None:     # page tables, mem_map, log buffer, ... (issue #8)
            regions += self.machine.kernel_structs.regions()
        self._regions = sorted(regions)
        self._region_starts = [r[0] for r in self._regions]
        self._reserved = list(self.machine.reservation.spans)
        self._plain_edges = sorted({e for span in self._reserved for e in span} | set(self.machine.cma or ()))


def run_crash(cfg: ModelConfig, seed: int = 0, env_type: type[simpy.Environment] = simpy.Environment,
              trace: bool = True) -> CrashRun:
    """Run one crash of `cfg` with `seed`, deterministic for the same pair; the
    run is not yet measured (kdumpsim.measure.simulate does both).
    (`env_type` lets a benchmark count events with a subclass; trace=False
    keeps no trace events, for sweeps: nothing else in the run depends on them.)"""
    env = env_type(initial_time=KEXEC_LOAD_TIME)
    run = CrashRun(Machine(cfg, seed), env, Trace(trace), device_names={d.name for d in cfg.devices})
    boot(run.machine, env.now)
    run.image = load_capture_kernel(run.machine)
    run.trace(env.now, KEXEC, "kexec_load", reservation=[run.machine.reservation.start, run.machine.reservation.end],
              segments=len(run.image.segments), cmdline=run.image.cmdline, method=run.image.method)
    run._index_regions()
    run.cpus = make_cpus(run)
    run.engines = make_engines(run)
    for eng in run.engines:
        eng.start()
    run.path = env.process(crash_path(run))
    env.run(until=run.path)
    return run


def boot(m: Machine, time: int) -> None:
    """What the first kernel wrote before the panic that the dump must hold:
    zeroed crash note buffers, VMCOREINFO, and (x86_64) page tables,
    mem_map and the boot log."""
    crash_notes_memory_init(m, time)
    vmcoreinfo.save_at_boot(m, time)
    if m.kernel_structs is not None:
        m.kernel_structs.write_boot(time)
        printk.boot_log(m, time)


def crash_path(run: CrashRun) -> Generator:
    env = run.env
    yield env.timeout(0 - env.now)
    yield from machine_crash_shutdown(run)
    step = relocate_2004 if run.machine.cfg.design == "2004" else purgatory
    reached_kernel = yield from step(run)
    if not reached_kernel:
        run.mark("hang", PURGATORY)
        return
    try:
        yield from capture_kernel(run)
    except simpy.Interrupt:
        pass          # the capture kernel crashed or ran out of memory: stop_capture traced why
