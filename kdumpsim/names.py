"""The vocabulary, declared once: actors, regions, outcomes and phases.

One name for one thing everywhere: the trace's `actor` field, the keys of a
model file, the report and the results table use these (desmod's dotted
scopes, flattened to one word because every actor is unique in a run).
"""

from __future__ import annotations

import re

# ---------------------------------------------------------------- actors
# Who writes memory or appears in the trace. Devices take the names the model
# gives them; these are the kernel's own and may not be taken by a device.
KERNEL = "kernel"          # the first kernel before the panic (boot-time writes)
KEXEC = "kexec"            # kexec -p loading the segments
PURGATORY = "purgatory"
CAPTURE = "capture"        # the capture kernel
IOMMU = "iommu"
IOAPIC = "ioapic"
PATH_ACTORS = (KEXEC, PURGATORY, CAPTURE, IOAPIC, IOMMU)
_CPU_RE = re.compile(r"^cpu(\d+)$")
# Topology nodes share the graph with devices (kdumpsim.machine.topology).
_TOPOLOGY_RE = re.compile(r"^(cpu|socket|mem)\d+$")
RESERVED_ACTORS = frozenset({KERNEL, KEXEC, PURGATORY, CAPTURE, IOMMU, IOAPIC, "root_complex"})


def cpu_actor(cpu: int) -> str:
    return f"cpu{cpu}"


def cpu_of(actor: str) -> int | None:
    """The CPU number of a `cpuN` actor, else None (a device may be called `cpu_fan`)."""
    m = _CPU_RE.match(actor)
    return int(m.group(1)) if m else None


def reserved_name(name: str) -> str | None:
    """Why a device may not be called `name` (None if it may)."""
    if name in RESERVED_ACTORS:
        return f"{name!r} is the kernel's own actor name"
    if _TOPOLOGY_RE.match(name):
        return f"{name!r} names a CPU, socket or memory node of the topology"
    return None


# ---------------------------------------------------------------- outcomes
OUTCOMES = {
    "ok": "the dump was captured and every dumped page equals RAM at the panic",
    "ok_dump_corrupted": "the dump was captured but DMA changed some dumped pages after the panic, or wrote "
                         "into the dump tool's buffers or the dump file's page cache while they held it",
    "cpu_state_missing": "the dump was captured without the registers of a CPU: it never answered the NMI, "
                         "or DMA overwrote its crash note",
    "vmcore_unavailable": "the capture kernel found the ELF core headers corrupt: /proc/vmcore has size 0",
    "capture_kernel_corrupted": "DMA changed the capture kernel, initrd or boot parameters after purgatory "
                                "checked them (silent: the capture kernel cannot be trusted, no dump)",
    "capture_kernel_crashed": "DMA wrote into memory the capture kernel was using (its image, early "
                              "allocations, slab, the unpacked initramfs): it crashes or misbehaves, no dump",
    "capture_oom": "the capture kernel ran out of memory in its reservation (too small for the kernel, "
                   "the unpacked initramfs, its allocations and the dump tool), no dump",
    "purgatory_mismatch": "purgatory's sha256 check failed: the machine hangs in purgatory (detected, no dump)",
}
# A usable dump came out (possibly damaged); every other outcome is a failed capture.
CAPTURE_OK = ("ok", "ok_dump_corrupted")

# ---------------------------------------------------------------- regions
# Parts of memory a DMA write can hit besides the kexec segments (named as kexec names them)
# and the first kernel's structures (kdumpsim.crash.run.CrashRun.regions_of).
RESERVATION_FREE = "reservation_free"
FIRST_KERNEL_RAM = "first_kernel_ram"
CMA = "cma"                  # the CMA crashkernel area: capture-kernel RAM after the jump

# ---------------------------------------------------------------- phases
# The moments of the crash path, in order: each is a trace event of that kind,
# a key of run.phase and a t_<phase> results column.
PHASES = {
    "nmi_shootdown_done": "the NMI round ended: every other CPU halted, or the 1000 ms wait ran out",
    "purgatory_start": "machine_kexec jumped to purgatory",
    "purgatory_end": "purgatory jumped to the capture kernel",
    "hang": "purgatory's sha256 check failed: it loops forever",
    "capture_boot_start": "the capture kernel started",
    "vmcore_init": "/proc/vmcore was set up (or not, if the ELF headers were bad)",
    "capture_boot_end": "the capture kernel finished booting",
    "dump_start": "the dump copy began reading /proc/vmcore",
    "dump_end": "the dump copy finished",
}
