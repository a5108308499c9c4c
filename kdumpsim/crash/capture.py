"""The capture kernel: boot inside the reservation, stop old DMA as drivers
probe, set up /proc/vmcore, then the dump copy (paper 4.4, 4.5).

Times are counted from purgatory's jump. The collector (capture.collector,
kdumpsim.crash.collector) reads /proc/vmcore: `dd` in file order at the dump
throughput, makedumpfile mem_map first, then the pages it keeps. A page DMA
changed before its read time shows the change in the dump. The copy is not
one event per page: the read time of any page follows from its offset (see
`read_time` of VmcoreCopy / MakedumpfileCopy).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING

from kdumpsim import defaults as D
from kdumpsim.crash.capturemem import CaptureMemory
from kdumpsim.crash.collector import MakedumpfileCopy, VmcoreCopy
from kdumpsim.crash.dma import wait_until
from kdumpsim.crash.integrity import changed_segments
from kdumpsim.crash.procvmcore import VmcoreInitError, layout_2004, vmcore_init
from kdumpsim.formats.vmcorefile import VmcoreLayout
from kdumpsim.names import CAPTURE, IOMMU

PAGE = D.PAGE_SIZE

if TYPE_CHECKING:
    from kdumpsim.crash.run import CrashRun


def capture_kernel(run: CrashRun) -> Generator:
    env, t = run.env, run.timing
    jump = env.now
    run.mark("capture_boot_start", CAPTURE, cmdline=run.image.cmdline)
    mem = run.capture_mem = _capture_memory(run, jump)
    if mem is not None:
        env.process(mem.boot())
    env.process(_iommu_init(run, jump + t.iommu_init))
    env.process(_driver_probes(run, jump))
    yield env.timeout(t.vmcore_init)
    run.vmcore = _vmcore_init(run)
    yield env.timeout(jump + t.capture_boot - env.now)
    run.capture_corrupted = _segments_changed_before_use(run, mem)
    if run.capture_corrupted:
        # A capture kernel whose text, initrd or parameters changed under it
        # cannot be trusted to do anything; we count it as producing no dump.
        run.trace(env.now, CAPTURE, "capture_kernel_corrupted", bytes=run.capture_corrupted)
        return
    run.mark("capture_boot_end", CAPTURE)
    if run.vmcore is None:
        return
    yield env.timeout(t.dump_start_delay)
    if run.capture_stopped or (mem is not None and not mem.dump_start(run.vmcore.size)):
        return
    if run.machine.cfg.capture.collector == "makedumpfile":
        yield from _makedumpfile(run)
    else:
        yield from _dd(run)
    if mem is not None:
        mem.dump_end()


def _dd(run: CrashRun) -> Generator:
    """dd of /proc/vmcore: every byte in file order at the dump throughput."""
    env = run.env
    copy = VmcoreCopy(run.vmcore, env.now, run.timing.dump_throughput)
    run.copy = copy
    run.mark("dump_start", CAPTURE, bytes=run.vmcore.size)
    for chunk in run.vmcore.chunks:      # one event per PT_LOAD, for the timeline
        yield env.timeout(max(0, copy.read_time(chunk.offset + chunk.size) - env.now))
        run.trace(env.now, CAPTURE, "dump_copy_segment", paddr=chunk.paddr, bytes=chunk.size)
    yield env.timeout(max(0, copy.end - env.now))
    run.mark("dump_end", CAPTURE, bytes=run.vmcore.size)


def _capture_memory(run: CrashRun, jump: int) -> CaptureMemory | None:
    """The capture kernel's memory over time (kdumpsim.crash.capturemem): modelled
    for the modern x86_64 kernel, whose sizes it uses."""
    cfg = run.machine.cfg
    if cfg.arch != "x86_64" or cfg.era != "modern" or cfg.design == "2004":
        return None
    return CaptureMemory(run, jump, cfg.capture.collector)


def _segments_changed_before_use(run: CrashRun, mem: CaptureMemory | None) -> dict[str, int]:
    """Bytes of the kernel, initrd and parameter segments that DMA changed before
    the capture kernel consumed them (docs/SOURCES.md §13: the kernel and the
    parameters at decompression, the initrd when populate_rootfs unpacked it);
    without a memory model, up to now."""
    out: dict[str, int] = {}
    for name in ("kernel", "initrd", "params"):
        at = run.env.now if mem is None else min(run.env.now, mem.consumed_at(name))
        out.update(changed_segments(run, (name,), at))
    return out


def _makedumpfile(run: CrashRun) -> Generator:
    """makedumpfile -d N: per cycle, mem_map (the keep decision is made as DMA
    left the struct pages when they were read), then the kept pages."""
    env, cap = run.env, run.machine.cfg.capture
    copy = MakedumpfileCopy(run.vmcore, env.now, run.timing.dump_throughput, run.machine.kernel_structs,
                            run.machine.memory, cap.dump_level)
    run.copy = copy
    run.mark("dump_start", CAPTURE, bytes=run.vmcore.size, collector="makedumpfile", dump_level=cap.dump_level)
    yield env.timeout(copy.count_pass_end - env.now)
    for c in copy.cycles:
        copy.begin(c, env.now)
        yield env.timeout(c.pages_start - env.now)
        copy.decide(c)
        run.trace(env.now, CAPTURE, "makedumpfile_bitmap", first_pfn=c.lo, end_pfn=c.hi,
                  pages=c.prefix[-1], struct_pages_changed=copy.struct_pages_changed)
        yield env.timeout(copy.cycle_end(c) - env.now)
    run.mark("dump_end", CAPTURE, bytes=copy.pages_read() * PAGE)


def _iommu_init(run: CrashRun, at: int) -> Generator:
    """pci_iommu_init (rootfs_initcall) in the capture kernel (docs/SOURCES.md §11):
    copy_tables keeps the old tables (each device faults once its new driver
    maps a buffer); copy_failed turns translation off, then on with fresh
    tables; intel_iommu=off turns it off for good (AMD's leaves the old tables on)."""
    iommu = run.machine.cfg.topology.iommu
    if iommu is None:
        return
    yield wait_until(run.env, at)
    mode = iommu.capture_kernel
    if mode == "copy_tables" or (mode == "off" and iommu.vendor == "amd"):
        run.iommu_state = "copied"
    else:
        run.iommu_state = "off"
    run.trace(run.env.now, IOMMU, "iommu_init", mode=mode, vendor=iommu.vendor, translation=run.iommu_state)
    if mode == "copy_failed":
        yield run.env.timeout(run.timing.iommu_fresh_tables)
        run.iommu_state = "fresh"
        run.trace(run.env.now, IOMMU, "iommu_translation_enabled", tables="fresh")


def _driver_probes(run: CrashRun, jump: int) -> Generator:
    """Each device's driver probes at its time: a probe that resets the device
    ends its old DMA (docs/SOURCES.md §11: e1000 and NVMe reset whatever
    `reset_devices` says; some drivers need it; virtio_pci resets every virtio
    function it binds; a driver missing from the kdump initramfs never probes)."""
    reset_devices = "reset_devices" in run.image.cmdline.split()
    by_time = sorted(run.engines, key=lambda e: (e.spec.probe_at if e.spec.probe_at is not None else run.timing.driver_init,
                                                e.index))
    for eng in by_time:
        spec = eng.spec
        yield wait_until(run.env, jump + (spec.probe_at if spec.probe_at is not None else run.timing.driver_init))
        if spec.kind == "virtio_net" and (spec.virtio_pci or spec.capture_driver):
            eng.stop("virtio_pci_reset")
        elif not spec.capture_driver:
            run.trace(run.env.now, eng.name, "no_driver_in_capture_kernel")
        elif spec.needs_reset_devices and not reset_devices:
            eng.new_domain = True         # it maps its own buffers: old IOVAs stop translating (copy_tables)
            run.trace(run.env.now, eng.name, "driver_init_without_reset")
        else:
            eng.new_domain = True
            eng.stop("driver_reset")


def _vmcore_init(run: CrashRun) -> VmcoreLayout | None:
    env, m, image = run.env, run.machine, run.image
    try:
        if m.cfg.design == "2004":
            cls = 1 if m.cfg.kexec.elf_core_headers == "elf32" else 2
            layout = layout_2004(m.memory, m.arch, cls, m.crash_notes, m.crash_note_size,
                                 (D.BACKUP_SIZE_2004, image.backup_dest), m.ram_ranges[-1][1], env.now)
        else:
            layout = vmcore_init(m.memory, image.elfcorehdr, env.now, m.arch, m.era, m.ram_ranges[-1][1])
    except (VmcoreInitError, ValueError) as e:
        run.vmcore_error = str(e)
        run.mark("vmcore_init", CAPTURE, size=0)
        run.trace(env.now, CAPTURE, "vmcore_init_failed", reason=str(e))
        return None
    run.mark("vmcore_init", CAPTURE, size=layout.size, notes=len(layout.note_sources),
             dropped_notes=len(layout.dropped_notes))
    return layout
