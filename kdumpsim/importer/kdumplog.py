"""`kdumpsim import --kdump-log FILE`: a capture kernel's boot log sets the model's capture timing.

The log is the capture kernel's console or dmesg (`[    1.234567] text`
lines; a prefix before the bracket, such as the lab's host clock, is
ignored). When it holds several boots (a serial console: the first kernel,
then the capture kernel), the last boot whose `Command line:` has
`elfcorehdr=` is the capture kernel's. A log with no such boot (e.g. the
first kernel's dmesg read back from a vmcore) is used as a stand-in and
every value says so: the same kernel on the same machine, an assumption.

What maps to what (docs/SOURCES.md §14 "A capture kernel's boot log"):

- timing.capture_boot    <- "Run /init as init process" (kernel_init)
- timing.vmcore_init     <- the first "clocksource: Switched to clocksource"
                            (fs_initcall clocksource_done_booting in kernel/,
                            linked before fs/proc/vmcore.c's fs_initcall
                            vmcore_init, which prints nothing when it works)
- timing.iommu_init      <- "DMAR: Intel(R) Virtualization Technology for
                            Directed I/O" (intel_iommu_init's last line) or
                            "PCI-DMA: Using software bounce buffering"
                            (pci_iommu_init), else "Trying to unpack rootfs"
                            (populate_rootfs, the same rootfs_initcall level:
                            approximate)
- devices.N.probe_at     <- the device's first `<driver> <PCI slot>:` line
                            (e.g. `e1000 0000:00:03.0 eth0: ...`), or for a
                            virtio device its first `<driver> virtioN:` line
- devices.N.capture_driver <- false when the boot reached the dump and the
                            device's driver printed nothing (its driver is
                            not in the kdump initramfs)
- timing.driver_init     <- the earliest probe seen before /init, else
                            capture_boot (initramfs modules load after /init)
- timing.dump_start_delay <- the lab's `LAB: DUMP START ... uptime=T` line
                            minus /init (dmesg does not show userspace)

Times count from the capture kernel's clock origin: the time from the jump
to its first timestamp (purgatory, decompression) is not in a log and is
taken as 0 (assumption).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdumpsim.errors import ConfigError

MAX_LOG = 16 * 2**20
_STAMP = re.compile(r"\[\s*(\d+\.\d+)\]\s?(.*)$")
_LAB_DUMP = re.compile(r"LAB: DUMP START .*uptime=(\d+(?:\.\d+)?)")

# (timing field, patterns in order of preference, what each pattern is)
MARKERS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("capture_boot", (("Run /init as init process", "kernel_init runs the initramfs /init"),
                      ("Run /sbin/init as init process", "kernel_init runs /sbin/init"))),
    ("vmcore_init", (("clocksource: Switched to clocksource",
                      "fs_initcall clocksource_done_booting (kernel/, linked before fs/proc/vmcore.c's "
                      "fs_initcall vmcore_init, which prints nothing when it works)"),)),
    ("iommu_init", (("DMAR: Intel(R) Virtualization Technology for Directed I/O",
                     "intel_iommu_init's last line (pci_iommu_init, rootfs_initcall)"),
                    ("PCI-DMA: Using software bounce buffering", "pci_iommu_init (rootfs_initcall)"),
                    ("Trying to unpack rootfs image as initramfs",
                     "populate_rootfs, the same rootfs_initcall level as pci_iommu_init (approximate)"))),
)
VIRTIO_DRIVERS = {"virtio_net": "virtio_net"}


@dataclass
class Boot:
    """One kernel boot in the log: (seconds, text, line number) per line."""
    lines: list[tuple[float, str, int]]
    cmdline: str
    capture: bool               # elfcorehdr= on its command line
    first_line: int
    dump_start: tuple[float, int] | None = None   # the lab's DUMP START marker (uptime, line)

    def find(self, text: str) -> tuple[float, int] | None:
        return next(((t, n) for t, msg, n in self.lines if text in msg), None)


def read_boot(path: str | Path) -> tuple[Boot, str]:
    """The capture kernel's boot in the log at `path`, and how the log is named."""
    p = Path(path)
    source = str(path)
    try:
        with open(p, "rb") as fh:
            data = fh.read(MAX_LOG + 1)
    except OSError as e:
        raise ConfigError(source, "", f"cannot read the kdump log: {e.strerror or e}") from None
    if len(data) > MAX_LOG:
        raise ConfigError(source, "", f"more than {MAX_LOG >> 20} MiB: not a boot log")
    return parse_boot(data.decode("utf-8", errors="replace"), source), source


def parse_boot(text: str, source: str) -> Boot:
    boots: list[Boot] = []
    for n, raw in enumerate(text.splitlines(), 1):
        m = _STAMP.search(raw)
        if m is None:
            lab = _LAB_DUMP.search(raw)
            if lab and boots and boots[-1].dump_start is None:
                boots[-1].dump_start = (float(lab.group(1)), n)
            continue
        t, msg = float(m.group(1)), m.group(2)
        if msg.startswith("Linux version "):
            boots.append(Boot([], "", False, n))
        if not boots:
            continue                    # lines before the first boot's banner (a cut log): not a boot
        boot = boots[-1]
        if msg.startswith("Command line:") and not boot.cmdline:
            boot.cmdline = msg.split(":", 1)[1].strip()
            boot.capture = any(w.startswith("elfcorehdr=") for w in boot.cmdline.split())
        boot.lines.append((t, msg, n))
    if not boots:
        raise ConfigError(source, "", "no 'Linux version' line with a [seconds] timestamp: not a kernel boot log "
                          "(dmesg, or the console of the capture kernel)")
    captures = [b for b in boots if b.capture]
    return captures[-1] if captures else boots[-1]


def _us(seconds: float) -> str:
    return f"{round(seconds * 1e6)}us"


def apply_kdump_log(raw: dict[str, Any], c: dict[str, str], notes: list[str], slots: list[tuple[str, str | None]],
                    path: str | Path) -> None:
    """Set raw["timing"] and the devices' probe_at/capture_driver from the log;
    `slots` is each device's (PCI slot, driver) in raw["devices"] order."""
    boot, source = read_boot(path)
    where = f"{source} line"
    stand_in = "" if boot.capture else " (a first-kernel boot standing in for the capture kernel's: assumption)"
    if not boot.capture:
        notes.append(f"{source}: no boot with elfcorehdr= on its Command line, so it is not a capture kernel's; "
                     f"its last boot (line {boot.first_line}) stands in for the capture kernel's boot (assumption: "
                     "the same kernel on the same machine)")
    timing: dict[str, str] = {}
    found: dict[str, float] = {}
    for fld, patterns in MARKERS:
        for text, what in patterns:
            hit = boot.find(text)
            if hit:
                found[fld] = hit[0]
                timing[fld] = _us(hit[0])
                c[f"timing.{fld}"] = f"{where} {hit[1]}: '{text}' at {hit[0]:.6f} s, {what}{stand_in}"
                break
    if "capture_boot" not in found:
        raise ConfigError(source, "timing.capture_boot", "the boot never reached 'Run /init as init process': "
                          "the log is cut short, or the capture kernel did not boot")
    init = found["capture_boot"]
    for fld in ("vmcore_init", "iommu_init"):
        if fld in found and found[fld] > init:
            timing.pop(fld)             # after /init: not the initcall (a later clocksource switch)
            c.pop(f"timing.{fld}")
            found.pop(fld)
    probes = _probes(boot, slots, raw["devices"], c, where, stand_in)
    early = [t for t in probes.values() if t <= init]
    timing["driver_init"] = _us(min(early) if early else init)
    c["timing.driver_init"] = ("the earliest driver probe before /init" if early else
                               "no driver probed before /init: initramfs modules load after it, so capture_boot; "
                               "devices seen probing have their own probe_at") + stand_in
    for fld in ("vmcore_init", "iommu_init"):
        if fld not in timing:
            timing[fld] = _us(init)
            c[f"timing.{fld}"] = f"no line in {source} marks it: at /init (capture_boot) at the latest"
    if boot.dump_start is not None and boot.dump_start[0] >= init:
        timing["dump_start_delay"] = _us(boot.dump_start[0] - init)
        c["timing.dump_start_delay"] = (f"{where} {boot.dump_start[1]}: LAB: DUMP START at uptime "
                                        f"{boot.dump_start[0]:.2f} s, minus /init")
    raw["timing"] = {k: timing[k] for k in ("capture_boot", "vmcore_init", "iommu_init", "driver_init",
                                            "dump_start_delay") if k in timing}


def _probes(boot: Boot, slots: list[tuple[str, str | None]], devices: list[dict[str, Any]], c: dict[str, str],
            where: str, stand_in: str) -> dict[int, float]:
    """Each device's first driver line: its probe_at; capture_driver false when none."""
    out: dict[int, float] = {}
    reached_dump = boot.dump_start is not None
    for i, (slot, driver) in enumerate(slots):
        dev = devices[i]
        name = driver.replace("-", "_") if driver else None
        if dev.get("kind") == "virtio_net":
            pat = re.compile(r"^virtio_net virtio\d+")
        elif name:
            pat = re.compile(rf"^{re.escape(name)} {re.escape(slot)}[: ]")
        else:
            continue
        hit = next(((t, n, msg) for t, msg, n in boot.lines if pat.search(msg)), None)
        if hit:
            out[i] = hit[0]
            dev["probe_at"] = _us(hit[0])
            dev["capture_driver"] = True
            c[f"devices.{i}.probe_at"] = f"{where} {hit[1]}: '{hit[2][:60]}'{stand_in}"
            c[f"devices.{i}.capture_driver"] = "its driver printed in the capture kernel"
        elif reached_dump and boot.capture:
            dev["capture_driver"] = False
            c[f"devices.{i}.capture_driver"] = (f"{name or 'its driver'} printed nothing for {slot} before the "
                                                "dump started: the kdump initramfs does not load it")
    return out
