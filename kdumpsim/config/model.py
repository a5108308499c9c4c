"""Model files (models/*.yaml): one validated schema, errors that name the field.

Defaults come from kdumpsim.defaults; fields whose default depends on the
kernel era (2005 or modern) are None here and filled by `_fill_era_defaults`.
"""

from __future__ import annotations

import copy
import difflib
import math
import os
import re
import stat
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from kdumpsim import defaults as D
from kdumpsim.errors import ConfigError
from kdumpsim.names import reserved_name
from kdumpsim.units import fmt_duration_exact, parse_duration, parse_rate, parse_size


def _nonneg_size(v: Any) -> int:
    if isinstance(v, str) and v.strip().startswith("-"):
        raise ValueError(f"size must not be negative, got {v!r}")
    if isinstance(v, float) and not math.isfinite(v):
        raise ValueError(f"expected a size such as 32M, got {v!r}")
    if not isinstance(v, (int, float, str)):
        raise ValueError(f"expected a size such as 32M or 0x1000000, got {_describe(v)}")
    n = parse_size(v)
    if n < 0:
        raise ValueError(f"size must not be negative, got {v!r}")
    if n >= 1 << 64:
        raise ValueError(f"size {v!r} is beyond a 64-bit address space")
    return n


def _duration(v: Any) -> int:
    if isinstance(v, float) and not math.isfinite(v):
        raise ValueError(f"expected a finite duration such as 10ms, got {v!r}")
    if not isinstance(v, (int, float, str)):
        raise ValueError(f"expected a duration such as 2us, 1ms or 10s, got {_describe(v)}")
    try:
        return parse_duration(v)
    except OverflowError:
        raise ValueError(f"duration {v!r} is too large") from None


def _nonneg_duration(v: Any) -> int:
    ns = _duration(v)
    if ns < 0:
        raise ValueError(f"duration must not be negative, got {v!r}")
    return ns


def _rate(v: Any) -> float:
    if isinstance(v, float) and not math.isfinite(v):
        raise ValueError(f"expected a finite rate such as 270MB/s, got {v!r}")
    if not isinstance(v, (int, float, str)):
        raise ValueError(f"expected a rate such as 270MB/s or 1GiB/s, got {_describe(v)}")
    r = parse_rate(v)
    if not math.isfinite(r):
        raise ValueError(f"expected a finite rate such as 270MB/s, got {v!r}")
    return r


def _not_bool(kind: str):
    def check(v: Any) -> Any:
        if isinstance(v, bool):
            raise ValueError(f"expected {kind}, got {_describe(v)}")
        return v
    return check


def _text(v: Any) -> Any:
    """Accept a bare YAML number where text is wanted (era: 2005, crashkernel: 256M is a string anyway)."""
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    return v


Size = Annotated[int, BeforeValidator(_nonneg_size)]
Duration = Annotated[int, BeforeValidator(_nonneg_duration)]   # integer ns, >= 0
SignedDuration = Annotated[int, BeforeValidator(_duration)]    # integer ns, may be negative
Rate = Annotated[float, BeforeValidator(_rate)]                # bytes/s, > 0
Int = Annotated[int, BeforeValidator(_not_bool("an integer"))]
Float = Annotated[float, BeforeValidator(_not_bool("a number"))]
Era = Annotated[Literal["2005", "modern"], BeforeValidator(_text)]
Design = Annotated[Literal["2005", "2004"], BeforeValidator(_text)]


def _field_error(field: str, message: str) -> PydanticCustomError:
    """An error a model validator raises for one of its fields (the path gets `field` appended)."""
    return PydanticCustomError("field_error", message.replace("{", "(").replace("}", ")"), {"field": field})


MIN_CYCLIC_PERIOD = 10_000       # ns: a cyclic engine's shortest period a run simulates
MAX_NMI_POLLS = 1_000_000      # the NMI wait's polls a run may simulate (the kernel: 1000)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, allow_inf_nan=False)


# ---------------------------------------------------------------- limits (README "Errors and recovery")
MAX_NUMA_NODES = 64                  # the simulated node_online_map is one u64
MAX_RAM_END = 64 << 40               # System RAM below 64 TiB: the simulated page tables' reach
MAX_RAM_RANGES = 4096                # System RAM lines; the ELF headers get one PT_LOAD each
MAX_BLOB = (256 << 20) - 1           # an image or one DMA transfer: its bytes are made in one piece
MAX_DEVICES = 1024                   # the simulated printk ring holds every device's probe lines
MIN_PACKET_RATE = 1e-6               # packets/s: slower would not arrive within any run anyway

# ---------------------------------------------------------------- machine
_IOMEM_RE = re.compile(r"^\s*([0-9a-fA-F]+)-([0-9a-fA-F]+)\s*:\s*(.+?)\s*$")
IOMEM_TYPES = ("System RAM", "reserved", "ACPI Tables", "ACPI Non-volatile Storage",
               "PCI Bus", "Video RAM area", "System ROM", "Adapter ROM")


class IomemRange(Strict):
    """One top-level /proc/iomem line; `end` is inclusive as in /proc/iomem."""
    start: Int = Field(ge=0)
    end: Int = Field(ge=0)
    type: str

    @property
    def size(self) -> int:
        return self.end - self.start + 1


def _parse_iomem(v: Any) -> Any:
    if isinstance(v, str):
        m = _IOMEM_RE.match(v)
        if not m:
            raise ValueError(f"cannot parse {v!r}: expected a /proc/iomem line such as "
                             "'00100000-1fffffff : System RAM' (hex start-end, inclusive, ' : ', type)")
        start, end, kind = int(m.group(1), 16), int(m.group(2), 16), m.group(3)
        return {"start": start, "end": end, "type": kind}
    if not isinstance(v, dict):
        raise ValueError(f"expected a /proc/iomem line such as '00100000-1fffffff : System RAM' "
                         f"(or a mapping with start, end, type), got {_describe(v)}")
    return v


def _distinct_cpu_keys(v: Any) -> Any:
    """`{1: hung, '1': nmi_lost}` names CPU 1 twice: refuse it rather than let one silently win."""
    if isinstance(v, dict):
        seen: dict[str, Any] = {}
        for k in v:
            ident = str(k).strip() if isinstance(k, (int, str)) and not isinstance(k, bool) else repr(k)
            if ident in seen:
                raise _field_error(ident, f"CPU {ident} is given twice (as {seen[ident]!r} and {k!r}); "
                                          "give each CPU once")
            seen[ident] = k
    return v


class CpuSpec(Strict):
    count: Int = Field(ge=1, le=8192)
    sockets: Int = Field(default=1, ge=1)
    panic_cpu: Int = Field(default=0, ge=0)
    # CPUs that never answer the NMI: "hung" (stuck with NMIs blocked) or "nmi_lost".
    unresponsive: Annotated[dict[Int, Literal["hung", "nmi_lost"]],
                            BeforeValidator(_distinct_cpu_keys)] = Field(default_factory=dict)
    busy_share: Float = Field(default=0.5, ge=0, le=1, description="share of CPUs running a task (pid>0) at the crash")
    # Possible CPUs, hotplug slots included ("smpboot: Allowing N CPUs, M hotplug CPUs"):
    # each has a per-cpu crash note buffer that stays zero. None: count (no hotplug slots).
    possible: Int | None = Field(default=None, ge=1, le=8192)


class MemorySpec(Strict):
    iomem: list[Annotated[IomemRange, BeforeValidator(_parse_iomem)]] = Field(min_length=1)
    # The kernel allows 1024 (NODES_SHIFT=10); the simulated node_online_map is one u64 word.
    numa_nodes: Int = Field(default=1, ge=1, le=MAX_NUMA_NODES)


class BusSpec(Strict):
    name: str
    kind: Literal["pci", "pcie"] = "pcie"
    bandwidth: Rate | None = None
    latency: Duration = parse_duration(D.PCI_LATENCY)
    iommu: bool = False
    numa_node: Int = Field(default=0, ge=0)


def _iommu_mode(v: Any) -> Any:
    if v is False:
        return "off"           # YAML reads a bare `off` as false
    renamed = {"disable": "off", "fault": "copy_failed"}
    if v in renamed:
        raise ValueError(f"{v!r} is now {renamed[v]!r} (docs/SOURCES.md §11 names what the kernel does)")
    return v


class IommuSpec(Strict):
    """The IOMMU across the crash (docs/SOURCES.md §11). The crash path leaves it
    alone; the capture kernel's IOMMU init (pci_iommu_init) decides what old DMA does."""
    vendor: Literal["intel", "amd"] = "intel"
    # First kernel: DMA through translation (IOVAs from the IOVA allocator) or
    # passthrough (iommu=pt: IOVA = physical address).
    first_kernel: Literal["translate", "passthrough"] = "translate"
    # Capture kernel: copy the old tables (old DMA keeps its old buffers until the
    # device's new driver maps its first buffer), the copy fails (translation off
    # briefly, then fresh tables: faults), or intel_iommu=off (translation off:
    # old IOVAs land as physical addresses; amd_iommu=off leaves the old tables on).
    capture_kernel: Annotated[Literal["copy_tables", "copy_failed", "off"],
                              BeforeValidator(_iommu_mode)] = "copy_tables"


class TopologySpec(Strict):
    apic_bus_latency: Duration | None = None
    socket_link_latency: Duration = parse_duration(D.SOCKET_LINK_LATENCY)
    memory_bandwidth: Rate = parse_rate(D.MEMORY_BANDWIDTH)
    buses: list[BusSpec] = Field(default_factory=lambda: [BusSpec(name="pci0")])
    iommu: IommuSpec | None = None


def _placement_mode(v: Any) -> Any:
    if v == "reservation":
        raise ValueError("no driver of the first kernel can own a buffer in the crashkernel reservation: it "
                         "is memblock-reserved at boot, before the page allocator exists (docs/SOURCES.md §11); "
                         "name how DMA gets there: mode: stale (a device programmed before the reservation "
                         "existed), mode: wild (a corrupted driver), or an IOMMU the capture kernel turns off "
                         "(topology.iommu.capture_kernel: off)")
    if v == "random":
        raise ValueError("'random' is now 'allocator' (pages the first kernel's page allocator could give the driver)")
    return v


class Placement(Strict):
    """Where a device's buffers are. `allocator`: pages the first kernel's page
    allocator could give the driver (never the reservation, the kernel image, the
    low 1 MiB or other kernel-owned memory); `range` narrows the allocator's choice
    to [start, end). Named ways elsewhere: `stale` (programmed before the reservation
    existed: firmware, a bootloader, a previous kernel; buffers anywhere in RAM in
    [start, end)), `wild` (a corrupted driver: every write at a random RAM address
    in [start, end)), `cma` (short-term pinned user pages in the CMA crashkernel area)."""
    mode: Annotated[Literal["allocator", "range", "stale", "wild", "cma", "given"],
                    BeforeValidator(_placement_mode)] = "allocator"
    start: Size | None = None
    end: Size | None = None
    # mode `given`: addresses measured in a real run (kdumpsim.lab predict): the
    # physical address each buffer is written at, in the order the device fills
    # them, and optionally its rings' addresses. Refused where the first
    # kernel's allocator could not have given them (outside System RAM, the low
    # 1 MiB, the kernel image, the crashkernel reservation).
    addresses: list[Size] | None = None
    rings: list[Size] | None = None

    @model_validator(mode="after")
    def _range(self) -> Placement:
        if self.mode == "given":
            if not self.addresses:
                raise _field_error("addresses", "placement mode 'given' needs the buffers' physical addresses "
                                                "(addresses: [0x27c00c0, ...]), as measured in a real run")
            if self.start is not None or self.end is not None:
                raise _field_error("mode", "placement mode 'given' takes addresses, not start/end")
        elif self.addresses is not None or self.rings is not None:
            raise _field_error("addresses", f"addresses and rings belong to placement mode 'given', "
                                            f"not {self.mode!r}")
        if self.mode in ("range", "stale"):
            for name in ("start", "end"):
                if getattr(self, name) is None:
                    raise _field_error(name, f"placement mode {self.mode!r} needs start and end "
                                             f"(e.g. start: 16M, end: 32M); {name} is missing")
        elif self.mode in ("allocator", "cma") and (self.start is not None or self.end is not None):
            raise _field_error("mode", f"placement mode {self.mode!r} takes no start/end; use mode: range "
                                       "to narrow the allocator's choice")
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise _field_error("end", f"placement end {self.end:#x} must be above start {self.start:#x}")
        return self


class DeviceBase(Strict):
    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    bus: str = "pci0"
    start: SignedDuration = 0           # when post-panic traffic begins, relative to the panic (< 0: already running)
    duration: Duration | None = None    # how long traffic goes on (None: until the device stops)
    placement: Placement = Field(default_factory=Placement)
    dma_bits: Literal[32, 64] = 64      # DMA mask: a 32-bit device's buffers are below 4 GiB (ZONE_DMA32)
    # How its old DMA stops: its driver probes in the capture kernel and resets the
    # device (with `reset_devices` only, where the driver needs it). None: the kind's
    # default (docs/SOURCES.md §11: a kdump initramfs for a local disk has the disk's
    # driver and no NIC drivers).
    capture_driver: bool | None = None
    needs_reset_devices: bool = False
    probe_at: Duration | None = None    # when its driver probes, from the capture kernel's start (default timing.driver_init)
    iova_in_use: Size = 0               # IOVA space the device's other live mappings take above these buffers


class NicRxRing(DeviceBase):
    """An e1000-style RX ring whose dead driver no longer refills it: the
    hardware owns N-2 of N descriptors at the panic; each buffer is a 1920-byte
    page_frag slice, 17 to a 32 KiB block (docs/SOURCES.md §11)."""
    kind: Literal["nic_rx_ring"]
    descriptors: Int = Field(default=D.E1000_RX_DESCRIPTORS, ge=3, le=65536)
    queues: Int = Field(default=1, ge=1, le=256)      # RX queues; RSS spreads packets over them
    posted: Int | None = Field(default=None, ge=0)    # descriptors the hardware owns at the panic (default N-2)
    buffer_size: Size = D.E1000_RX_BUFFER_LEN         # rx_buffer_len: the most the device writes per buffer
    packet_size: Size = 1514
    packet_rate: Float = Field(default=50_000.0, gt=0, description="packets per second")
    # Poisson arrivals, or evenly spaced at packet_rate (a paced sender, as the lab's)
    arrivals: Literal["poisson", "periodic"] = "poisson"

    @model_validator(mode="after")
    def _sizes(self) -> NicRxRing:
        for name in ("buffer_size", "packet_size"):
            if getattr(self, name) < 1:
                raise _field_error(name, "must be at least 1 byte")
        if self.buffer_size > D.PAGE_FRAG_BLOCK - 512:
            raise _field_error("buffer_size", f"a page_frag buffer holds at most {D.PAGE_FRAG_BLOCK - 512} bytes")
        if self.posted is not None and self.posted > self.descriptors:
            raise _field_error("posted", f"at most descriptors ({self.descriptors}) can be posted")
        return self


class VirtioNet(DeviceBase):
    """virtio-net RX: mergeable buffers ~2.6 per page; N-32..N posted; reset by
    virtio_pci's probe whenever the capture kernel loads virtio_pci (docs/SOURCES.md §11)."""
    kind: Literal["virtio_net"]
    queue_size: Int = Field(default=D.VIRTIO_QUEUE_SIZE, ge=33, le=32768)
    queues: Int = Field(default=1, ge=1, le=256)
    posted: Int | None = Field(default=None, ge=0)    # buffers posted at the panic (default: N-32..N, seeded)
    buffer_size: Size = D.VIRTIO_RX_BUFFER
    packet_size: Size = 1514
    packet_rate: Float = Field(default=50_000.0, gt=0, description="packets per second")
    # Poisson arrivals, or evenly spaced at packet_rate (a paced sender, as the lab's)
    arrivals: Literal["poisson", "periodic"] = "poisson"
    virtio_pci: bool = True    # the capture kernel loads virtio_pci (for a virtio dump disk): it resets this device

    @model_validator(mode="after")
    def _sizes(self) -> VirtioNet:
        if not 1 <= self.buffer_size <= 4096:
            raise _field_error("buffer_size", "a mergeable buffer is 1 to 4096 bytes")
        if self.posted is not None and self.posted > self.queue_size:
            raise _field_error("posted", f"at most queue_size ({self.queue_size}) can be posted")
        return self


class CyclicDma(DeviceBase):
    """A DMA engine cycling over one buffer forever (sound card, capture card)."""
    kind: Literal["cyclic"]
    buffer_size: Size = 64 * 1024
    chunk: Size = 4096
    period: Duration = parse_duration("1ms")

    @model_validator(mode="after")
    def _sizes(self) -> CyclicDma:
        for name in ("buffer_size", "chunk"):
            if getattr(self, name) < 1:
                raise _field_error(name, "must be at least 1 byte")
        if self.period < MIN_CYCLIC_PERIOD:
            raise _field_error("period", f"must be at least {fmt_duration_exact(MIN_CYCLIC_PERIOD)} (e.g. 1ms: an audio "
                                         "or capture engine's period): the engine writes once per period, forever")
        return self


class StorageController(DeviceBase):
    """An NVMe controller: commands in flight at the crash complete after a
    latency drawn from a lognormal (median, 99.9th percentile), each filling its
    data pages and posting a completion entry; optionally a Host Memory Buffer
    the controller writes until it is reset (docs/SOURCES.md §11)."""
    kind: Literal["storage"]
    queues: Int = Field(default=1, ge=1, le=1024)
    commands: Int = Field(default=32, ge=1, le=65536)     # in flight at the crash, over all queues
    command_size: Size = 64 * 1024
    latency_median: Duration = parse_duration(D.NVME_LATENCY_MEDIAN)
    latency_p999: Duration = parse_duration(D.NVME_LATENCY_P999)
    hmb: Size = 0                                          # Host Memory Buffer size (0: none)

    @model_validator(mode="after")
    def _sizes(self) -> StorageController:
        if self.command_size < 1:
            raise _field_error("command_size", "must be at least 1 byte")
        if not 0 < self.latency_median <= self.latency_p999:
            raise _field_error("latency_p999", "needs 0 < latency_median <= latency_p999")
        return self


DEVICE_KINDS = {"nic_rx_ring": NicRxRing, "virtio_net": VirtioNet, "cyclic": CyclicDma, "storage": StorageController}
Device = Annotated[NicRxRing | VirtioNet | CyclicDma | StorageController, Field(discriminator="kind")]
# Whose driver a kdump initramfs carries by default (docs/SOURCES.md §11: dracut
# strict host-only with --hostonly-nics '': the dump disk's driver, no NIC drivers).
CAPTURE_DRIVER_DEFAULT = {"nic_rx_ring": False, "virtio_net": False, "cyclic": False, "storage": True}


class KexecSpec(Strict):
    crashkernel: Annotated[str, BeforeValidator(_text)] = "32M@16M"
    capture_kernel_size: Size | None = None       # the kernel file kexec loads (a bzImage's protected-mode part)
    capture_kernel_init_size: Size | None = None  # the memory it needs (setup header init_size): the segment's memsz
    capture_kernel_image: str | None = None       # a real vmlinuz: both sizes read from its setup header
    initrd_size: Size | None = None
    append: str | None = None
    elf_core_headers: Literal["elf64", "elf32"] = "elf64"
    skip_checks: bool = False            # kexec --skip-checks: purgatory does not verify
    backup: bool = True                  # kexec-tools' backup region (kexec_load path)
    # How kexec -p loads the capture kernel (docs/SOURCES.md §12): kexec_load (kexec-tools
    # lays out the segments and builds the ELF core headers) or kexec_file_load (`kexec -s`:
    # the kernel does both, with its own purgatory). None: kexec_file_load for modern x86_64
    # (kexec-tools 2.0.27's default, RHEL 8/9 and Fedora's KEXEC_ARGS="-s"), else kexec_load.
    method: Literal["kexec_load", "kexec_file_load"] | None = None
    # crashkernel=SIZE,cma (Linux 6.17): an extra area the first kernel uses for
    # movable pages and the capture kernel gets as RAM, left out of the dump.
    crashkernel_cma: Size | None = None
    # crashkernel=Y,low: the low region kept below 4 GiB when the reservation is above it.
    crashkernel_low: Size | None = None


class CaptureSpec(Strict):
    """The dump collector the capture kernel's kdump service runs (docs/SOURCES.md
    "makedumpfile as the collector"). None: the era's default, filled by
    _fill_era_defaults: makedumpfile for modern x86_64 (RHEL's
    DEFAULT_CORE_COLLECTOR "makedumpfile -l --message-level 1 -d 31", Debian
    kdump-tools), dd for the 2005 era (makedumpfile's first release is 2006;
    the paper's kdump copied /proc/vmcore with cp)."""
    collector: Literal["dd", "makedumpfile"] | None = None
    dump_level: Annotated[int, Field(ge=0, le=31)] = 31     # makedumpfile -d: zero|cache|cache_private|user|free


def _version_text(v: Any) -> Any:
    """A kernel version written as a bare YAML number (version: 4.18) is text."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return str(v)
    return v


class KernelSpec(Strict):
    # The first kernel's version (issue #8): its log buffer format (the lockless
    # `prb` ring from 5.10 on, `printk_log` records before) and its VMCOREINFO
    # set. None: the era's kernel (modern: 6.1, 2005: 2.6.13).
    # 6.6: crash hotplug (CONFIG_CRASH_HOTPLUG, default y) leaves kexec_file's elfcorehdr out
    # of purgatory's digest; its first-kernel structures are simulated as 6.1's (assumption).
    version: Annotated[Literal["6.1", "6.6", "4.18"], BeforeValidator(_version_text)] | None = None
    # Where the first kernel's image is: its [start, end) ranges as /proc/iomem lists
    # them ("Kernel code", "Kernel rodata", ...; the gaps between are free memory).
    # None: the arch's load address (x86_64: 16 MiB) and an assumed size.
    image: list[tuple[Size, Size]] | None = Field(default=None, min_length=1)
    # panic() prints its banner and stack before kdump runs; on a synchronous console
    # (a serial line: 115200 baud is 11520B/s) that takes the text's length / rate.
    # None: no console the panic waits for.
    console_rate: Rate | None = None
    # crash_kexec_post_notifiers (forced on Hyper-V, SEV-SNP hosts, powerpc fadump):
    # stop the other CPUs, run the panic notifiers and kmsg_dump, then kdump.
    crash_kexec_post_notifiers: bool = False

    @model_validator(mode="after")
    def _image(self) -> KernelSpec:
        for start, end in self.image or []:
            if end <= start:
                raise _field_error("image", f"a kernel image range's end {end:#x} must be above its start {start:#x}")
        return self


# Named timing profiles (docs/SOURCES.md §13): `server` is the defaults below (published
# Fedora/FCOS boot logs for the capture service's start, the split inside it assumed);
# `qemu-tcg` is measured in the lab (kdumpsim/lab/data/qemu-tcg-profile.yaml, medians).
TIMING_PROFILES = ("server", "qemu-tcg")
LAB_PROFILE = Path(__file__).resolve().parent.parent / "lab" / "data" / "qemu-tcg-profile.yaml"
# The lab capture kernel's log (e1000-nodriver-10pps, 2026-11-30): "Trying to unpack
# rootfs image as initramfs..." (rootfs_initcall, after fs_initcall vmcore_init) at
# 1.2516 s, "Freeing initrd memory: 1724K" at 1.3926 s for a 1763109-byte initrd.
LAB_ROOTFS_INITCALL = 1.2516
LAB_UNPACK_RATE = 1763109 / (1.392574 - 1.251590)


def timing_profile(name: str) -> dict[str, Any]:
    """The timing fields a named profile sets (explicit fields override them)."""
    if name == "server":
        return {}
    data = yaml.safe_load(LAB_PROFILE.read_text())["values"]
    v = {k: float(e["value"]) for k, e in data.items()}
    boot = v["capture_boot"]
    return {
        # panic -> the capture kernel's first line, lumped (TCG: purgatory, decompression, early boot)
        "machine_kexec": f"{round(v['capture_kernel_start'] * 1e6)}us",
        "capture_boot": f"{round(boot * 1e6)}us",
        "vmcore_init": f"{round(min(boot, LAB_ROOTFS_INITCALL) * 1e6)}us",
        "iommu_init": f"{round(min(boot, LAB_ROOTFS_INITCALL) * 1e6)}us",
        "driver_init": f"{round(min(boot, v['disk_driver_probe']) * 1e6)}us",
        "dump_start_delay": f"{round(v['dump_start_delay'] * 1e6)}us",
        "dump_throughput": f"{v['dump_throughput']}MB/s",
        "initramfs_unpack_rate": round(LAB_UNPACK_RATE),
    }


class TimingSpec(Strict):
    profile: Literal["server", "qemu-tcg"] = "server"
    crash_save_cpu: Duration = parse_duration(D.CRASH_SAVE_CPU)
    lapic_shutdown: Duration = parse_duration(D.LAPIC_SHUTDOWN)
    ioapic_disable: Duration = parse_duration(D.IOAPIC_DISABLE)
    hpet_disable: Duration = parse_duration(D.HPET_DISABLE)
    machine_kexec: Duration = parse_duration(D.MACHINE_KEXEC)
    nmi_timeout: Duration = parse_duration(D.NMI_SHOOTDOWN_TIMEOUT)
    nmi_poll: Duration = parse_duration(D.NMI_SHOOTDOWN_POLL)
    sha256_rate: Rate | None = None
    backup_copy_rate: Rate = parse_rate(D.BACKUP_COPY_RATE)
    capture_boot: Duration = parse_duration(D.CAPTURE_BOOT)
    driver_init: Duration = parse_duration(D.CAPTURE_DRIVER_INIT)
    iommu_init: Duration = parse_duration(D.CAPTURE_IOMMU_INIT)
    iommu_fresh_tables: Duration = parse_duration(D.IOMMU_FRESH_TABLES)
    cma_dma_wait: Duration = parse_duration(D.CMA_DMA_WAIT)
    panic_notifiers: Duration = 0        # panic notifiers + kmsg_dump with crash_kexec_post_notifiers (assumption)
    vmcore_init: Duration = parse_duration(D.VMCORE_INIT_AT)
    dump_start_delay: Duration = parse_duration(D.DUMP_START_DELAY)
    dump_throughput: Rate | None = None
    initramfs_unpack_rate: Rate = parse_rate(D.INITRAMFS_UNPACK_RATE)

    @model_validator(mode="before")
    @classmethod
    def _profile(cls, data: Any) -> Any:
        """A named profile's values under the fields the model gives itself."""
        if isinstance(data, dict) and data.get("profile") in TIMING_PROFILES:
            return {**timing_profile(data["profile"]), **data}
        return data

    @model_validator(mode="after")
    def _order(self) -> TimingSpec:
        for name in ("driver_init", "iommu_init", "vmcore_init"):
            if not 0 <= getattr(self, name) <= self.capture_boot:
                raise _field_error(name, f"{name} ({fmt_duration_exact(getattr(self, name))}) must lie within capture_boot "
                                         f"(0..{fmt_duration_exact(self.capture_boot)}, counted from the capture kernel's "
                                         f"start); lower it or raise timing.capture_boot")
        if self.nmi_poll <= 0:
            raise _field_error("nmi_poll", "nmi_poll must be positive (the kernel polls every 1ms)")
        if self.nmi_timeout // self.nmi_poll > MAX_NMI_POLLS:
            raise _field_error("nmi_poll", f"{self.nmi_timeout // self.nmi_poll} polls in the NMI wait; at most "
                                           f"{MAX_NMI_POLLS} are simulated (the kernel polls every 1ms)")
        return self


class ModelConfig(Strict):
    name: str
    description: str = ""
    arch: Literal["i386", "x86_64"]
    era: Era = "modern"
    design: Design = "2005"
    cpus: CpuSpec
    memory: MemorySpec
    kexec: KexecSpec = Field(default_factory=KexecSpec)
    capture: CaptureSpec = Field(default_factory=CaptureSpec)
    timing: TimingSpec = Field(default_factory=TimingSpec)
    kernel: KernelSpec = Field(default_factory=KernelSpec)
    topology: TopologySpec = Field(default_factory=TopologySpec)
    devices: list[Device] = Field(default_factory=list)


def _fill_era_defaults(m: ModelConfig) -> None:
    modern = m.era == "modern"
    k, t, topo = m.kexec, m.timing, m.topology
    if k.capture_kernel_size is None and k.capture_kernel_image is None:
        k.capture_kernel_size = D.CAPTURE_KERNEL_SIZE_MODERN if modern else D.CAPTURE_KERNEL_SIZE_2005
        if k.capture_kernel_init_size is None and modern:
            k.capture_kernel_init_size = D.CAPTURE_KERNEL_INIT_SIZE_MODERN
    if k.capture_kernel_init_size is None and k.capture_kernel_size is not None:
        k.capture_kernel_init_size = k.capture_kernel_size     # a vmlinux, or a kernel given by its size only
    if k.initrd_size is None:
        k.initrd_size = D.INITRD_SIZE_MODERN if modern else D.INITRD_SIZE_2005
    if k.append is None:
        k.append = D.CMDLINE_MODERN if modern else D.CMDLINE_2005
    if k.method is None:
        k.method = "kexec_file_load" if modern and m.arch == "x86_64" and m.design == "2005" else "kexec_load"
    if t.sha256_rate is None:
        t.sha256_rate = parse_rate(D.PURGATORY_SHA256_RATE_MODERN if modern else D.PURGATORY_SHA256_RATE_2005)
    if m.capture.collector is None:
        m.capture.collector = "makedumpfile" if has_kernel_structs(m) else "dd"
    if t.dump_throughput is None:
        t.dump_throughput = parse_rate(D.DUMP_THROUGHPUT_MODERN if modern else D.DUMP_THROUGHPUT_2005)
    if topo.apic_bus_latency is None:
        topo.apic_bus_latency = parse_duration(D.APIC_BUS_LATENCY_MODERN if modern else D.APIC_BUS_LATENCY_2005)
    for d in m.devices:
        if d.capture_driver is None:
            d.capture_driver = CAPTURE_DRIVER_DEFAULT[d.kind]
    for bus in topo.buses:
        if bus.bandwidth is None:
            bus.bandwidth = parse_rate(D.PCI_BANDWIDTH if bus.kind == "pci" else D.PCIE_X4_BANDWIDTH)


def has_kernel_structs(m: ModelConfig) -> bool:
    """The model simulates the first kernel's mem_map, page tables and log
    (kdumpsim.firstkernel.mm; Machine builds them under the same condition)."""
    return m.arch == "x86_64" and m.era == "modern" and m.design != "2004"


class _FieldError(ValueError):
    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(message)


def _check_consistency(m: ModelConfig) -> None:
    if m.arch == "x86_64" and (m.era == "2005" or m.design == "2004"):
        # kexec-tools of 2005 (cd18217) had crash-dump support for i386 only;
        # x86_64 kdump came to kexec-tools in 2006 (docs/SOURCES.md).
        field = "era" if m.era == "2005" else "design"
        raise _FieldError(field, f"{field} {getattr(m, field)!r} is i386 only: kdump for x86_64 came in 2006; "
                                 "use arch: i386, or era: modern with design: \"2005\"")
    c = m.cpus
    if c.panic_cpu >= c.count:
        raise _FieldError("cpus.panic_cpu", f"CPU {c.panic_cpu} does not exist: cpus.count is {c.count}, "
                                            f"so panic_cpu must be 0..{c.count - 1}")
    for cpu in c.unresponsive:
        if not 0 <= cpu < c.count:
            raise _FieldError(f"cpus.unresponsive.{cpu}", f"CPU {cpu} does not exist: cpus.count is {c.count}, "
                                                          f"so CPUs are 0..{c.count - 1}")
        if cpu == c.panic_cpu:
            raise _FieldError(f"cpus.unresponsive.{cpu}", f"CPU {cpu} is the panicking CPU (cpus.panic_cpu), "
                                                          "which cannot be unresponsive; pick another CPU")
    if c.possible is not None and c.possible < c.count:
        raise _FieldError("cpus.possible", f"{c.possible} possible CPUs for {c.count} present ones: possible "
                                           "counts every CPU, hotplug slots included, so it must be at least count")
    if c.sockets > c.count:
        raise _FieldError("cpus.sockets", f"{c.sockets} sockets for {c.count} CPUs: every socket needs a CPU, "
                                          f"so sockets must be at most {c.count}")
    _check_iomem(m)
    _check_limits(m)
    buses = {b.name for b in m.topology.buses}
    seen_bus: set[str] = set()
    for i, b in enumerate(m.topology.buses):
        if b.name in seen_bus:
            raise _FieldError(f"topology.buses.{i}.name", f"duplicate bus name {b.name!r}: bus names must be unique")
        seen_bus.add(b.name)
        if b.numa_node >= m.memory.numa_nodes:
            raise _FieldError(f"topology.buses.{i}.numa_node",
                              f"no memory node {b.numa_node}: memory.numa_nodes is {m.memory.numa_nodes}, "
                              f"so nodes are 0..{m.memory.numa_nodes - 1}")
        if b.iommu and m.topology.iommu is None:
            raise _FieldError(f"topology.buses.{i}.iommu",
                              "bus is behind an IOMMU but topology.iommu is not set; add e.g. "
                              "'iommu: {capture_kernel: copy_tables}' under topology")
    seen_dev: dict[str, int] = {}
    ram = [(r.start, r.end + 1) for r in m.memory.iomem if r.type == "System RAM"]
    for i, d in enumerate(m.devices):
        if d.name in seen_dev:
            raise _FieldError(f"devices.{i}.name", f"duplicate device name {d.name!r} "
                                                   f"(also devices.{seen_dev[d.name]}): device names must be unique")
        seen_dev[d.name] = i
        clash = reserved_name(d.name) or (f"{d.name!r} is a bus of topology.buses" if d.name in buses else None)
        if clash:
            raise _FieldError(f"devices.{i}.name", f"{clash}: a device needs a name of its own, e.g. nic0, nvme0")
        if d.bus not in buses:
            raise _FieldError(f"devices.{i}.bus", f"no bus {d.bus!r}{_did_you_mean(d.bus, buses)}; "
                                                  f"buses in topology.buses: {', '.join(sorted(buses)) or 'none'}")
        p = d.placement
        if p.start is not None and p.end is not None and not any(s < p.end and e > p.start for s, e in ram):
            raise _FieldError(f"devices.{i}.placement", f"no System RAM in {p.start:#x}-{p.end:#x} to place "
                                                        f"DMA buffers in; System RAM is {_ram_list(ram)}")
        if p.mode == "cma" and (d.kind != "storage" or m.kexec.crashkernel_cma is None):
            raise _FieldError(f"devices.{i}.placement.mode", "CMA holds movable pages only: short-term pinned "
                                                             "user pages of storage I/O (kind: storage) with "
                                                             "kexec.crashkernel_cma set")
    if m.capture.collector == "makedumpfile" and not has_kernel_structs(m):
        raise _FieldError("capture.collector", "makedumpfile reads the first kernel's mem_map through VMCOREINFO, "
                                               "simulated for modern x86_64 models only; use collector: dd")
    k = m.kexec
    if k.capture_kernel_image is not None:
        if m.era != "modern" or m.arch != "x86_64":
            raise _FieldError("kexec.capture_kernel_image", "a vmlinuz (bzImage) is read for modern x86_64 "
                                                            "models; give capture_kernel_size for others")
        given = [f for f in ("capture_kernel_size", "capture_kernel_init_size") if getattr(k, f) is not None]
        if given:
            raise _FieldError(f"kexec.{given[0]}", "give either capture_kernel_image or the sizes, not both: "
                                                   "the image's setup header says both")
    if k.method == "kexec_file_load":
        if m.arch != "x86_64" or m.era != "modern" or m.design != "2005":
            raise _FieldError("kexec.method", "kexec_file_load exists on x86_64 since Linux 3.17 (KEXEC_FILE "
                                              "depends on X86_64): use it with arch: x86_64, era: modern")
        if k.skip_checks:
            raise _FieldError("kexec.skip_checks", "the kernel's purgatory always verifies its digest on the "
                                                   "kexec_file_load path; skip_checks is kexec-tools' (kexec_load)")
    if k.elf_core_headers == "elf32" and m.arch == "x86_64":
        raise _FieldError("kexec.elf_core_headers", "elf32 core headers are for i386 only; use elf64 on x86_64")
    if k.elf_core_headers == "elf32" and m.memory.iomem[-1].end >= 1 << 32:
        raise _FieldError("kexec.elf_core_headers", "elf32 headers cannot describe RAM above 4 GiB "
                                                    f"(iomem reaches {m.memory.iomem[-1].end:#x}); use elf64")


def _check_iomem(m: ModelConfig) -> None:
    iomem = m.memory.iomem
    for i, r in enumerate(iomem):
        if r.end < r.start:
            raise _FieldError(f"memory.iomem.{i}", f"range {r.start:x}-{r.end:x} ends before it starts "
                                                   "(write start-end, end inclusive)")
        if i and r.start <= iomem[i - 1].end:
            prev = iomem[i - 1]
            what = ("overlaps" if r.start >= prev.start else "is out of order: it starts below")
            raise _FieldError(f"memory.iomem.{i}", f"{r.start:x}-{r.end:x} {what} the line above it "
                                                   f"({prev.start:x}-{prev.end:x} : {prev.type}); "
                                                   "lines must be sorted by address and must not overlap")
        if not r.type.isprintable():
            bad = next(c for c in r.type if not c.isprintable())
            raise _FieldError(f"memory.iomem.{i}", f"type {r.type!r} holds an invisible or control character "
                                                   f"(U+{ord(bad):04X}); retype it, e.g. 'System RAM'")
        if r.type != "System RAM" and (re.sub(r"[\s_-]", "", r.type).lower() == "systemram"
                                       or _closest_iomem_type(r.type) == "System RAM"):
            raise _FieldError(f"memory.iomem.{i}", f"unknown type {r.type!r} (did you mean 'System RAM'?)")
    if not any(r.type == "System RAM" for r in iomem):
        raise _FieldError("memory.iomem", "no 'System RAM' range: the machine needs memory, "
                                          "e.g. '00100000-1fffffff : System RAM'")
    if m.arch == "i386" and iomem[-1].end >= 1 << 36:
        raise _FieldError(f"memory.iomem.{len(iomem) - 1}", "i386 (PAE) addresses at most 64 GiB "
                                                            "(end at most fffffffff)")
    if m.arch == "x86_64" and iomem[-1].end >= 1 << 52:
        raise _FieldError(f"memory.iomem.{len(iomem) - 1}", "x86_64 addresses at most 4 PiB "
                                                            "(52-bit physical addresses)")


def _check_limits(m: ModelConfig) -> None:
    """What the simulator cannot build (a one-line error, not a traceback deep in a run)."""
    ram = [(i, r) for i, r in enumerate(m.memory.iomem) if r.type == "System RAM"]
    if len(ram) > MAX_RAM_RANGES:
        raise _FieldError("memory.iomem", f"{len(ram)} System RAM ranges; at most {MAX_RAM_RANGES} are simulated "
                                          "(the vmcore's ELF headers get a PT_LOAD for each): merge adjacent ones")
    for i, r in ram:
        if r.end >= MAX_RAM_END:
            raise _FieldError(f"memory.iomem.{i}", f"System RAM up to {r.end:#x}: at most 64 TiB "
                                                   f"(end below {MAX_RAM_END:#x}) is simulated")
    k = m.kexec
    for name in ("capture_kernel_size", "initrd_size"):
        if (getattr(k, name) or 0) > MAX_BLOB:
            raise _FieldError(f"kexec.{name}", f"{getattr(k, name)} bytes: at most {MAX_BLOB} (256 MiB - 1) "
                                               "is simulated")
    if len(m.devices) > MAX_DEVICES:
        raise _FieldError("devices", f"{len(m.devices)} devices: at most {MAX_DEVICES} are simulated "
                                     "(each logs its probe in the simulated printk ring)")
    for i, d in enumerate(m.devices):
        for name in ("packet_size", "buffer_size", "chunk", "command_size"):
            size = getattr(d, name, None)
            if size is not None and size > MAX_BLOB:
                raise _FieldError(f"devices.{i}.{name}", f"{size} bytes in one DMA transfer: at most {MAX_BLOB} "
                                                         "(256 MiB - 1) is simulated")
        rate = getattr(d, "packet_rate", None)
        if rate is not None and rate < MIN_PACKET_RATE:
            raise _FieldError(f"devices.{i}.packet_rate", f"{rate!r} packets/s: at least {MIN_PACKET_RATE} "
                                                          "(one packet in 11 days)")


def _closest_iomem_type(kind: str) -> str | None:
    """The known /proc/iomem type `kind` is a near-miss of (None if it is one, or near none)."""
    if kind in IOMEM_TYPES:
        return None
    lower = {t.lower(): t for t in IOMEM_TYPES}
    close = difflib.get_close_matches(kind.lower(), list(lower), n=1, cutoff=0.75)
    return lower[close[0]] if close else None


def _ram_list(ram: list[tuple[int, int]]) -> str:
    return ", ".join(f"{s:#x}-{e - 1:#x}" for s, e in ram)


def _did_you_mean(word: Any, choices: Any) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# ---------------------------------------------------------------- loading
MAX_FILE_BYTES = 4 * 1024 * 1024     # a model is a few KiB; refuse to slurp /dev/zero
MAX_NODES = 200_000                  # values after YAML aliases are expanded (billion laughs)
MAX_DEPTH = 64                       # nesting levels


class _Loader(yaml.SafeLoader):
    """safe_load that refuses duplicate keys (yaml.safe_load keeps the last one silently)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[tuple[str, str], int] = {}
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    ident = (key_node.tag, key_node.value)
                    if ident in seen:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"duplicate key {key_node.value!r} (first given on line {seen[ident]})",
                            key_node.start_mark)
                    seen[ident] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path) -> Any:
    """Read a YAML file; syntax errors, missing, unreadable or hostile files become ConfigError."""
    p, source = Path(path), str(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)    # a FIFO must not block the open
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            if stat.S_ISDIR(mode):
                raise IsADirectoryError(p)
            raise ConfigError(source, "", "not a regular file (a FIFO, device or socket); give a YAML file")
        with open(fd, "rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(source, "", "no such file") from None
    except IsADirectoryError:
        raise ConfigError(source, "", "is a directory, not a YAML file") from None
    except PermissionError:
        raise ConfigError(source, "", "permission denied (cannot read the file)") from None
    except OSError as e:
        raise ConfigError(source, "", f"cannot read: {e.strerror or e}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(source, "", f"file is larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB; "
                                      "a model file is a few KiB of YAML")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ConfigError(source, "", f"not UTF-8 text: byte {data[e.start]:#04x} on line {line} "
                                      "cannot be decoded (save the file as UTF-8)") from None
    if "\0" in text:
        line = text[:text.index("\0")].count("\n") + 1
        raise ConfigError(source, "", f"not a text file: NUL byte on line {line}")
    try:
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            try:
                size = _expanded_size(node, {}) if node is not None else 0
            except _TooDeep:
                raise ConfigError(source, "", f"YAML nested more than {MAX_DEPTH} levels deep") from None
            if size > MAX_NODES:
                raise ConfigError(source, "", f"more than {MAX_NODES} values once YAML aliases (*name) and merge "
                                              "keys (<<) are expanded; a model has a few hundred")
            raw = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        context = getattr(e, "context", None)
        hint = f" ({context})" if context and "duplicate" not in problem else ""
        raise ConfigError(source, "", f"YAML syntax error{where}: {problem}{hint}") from None
    except RecursionError:
        raise ConfigError(source, "", f"YAML nested too deeply (a model needs at most {MAX_DEPTH} levels)") from None
    except ValueError as e:     # an integer of more than 4300 digits (int_max_str_digits)
        raise ConfigError(source, "", f"a value YAML cannot read: {e}".split(";")[0]) from None
    _check_shape(raw, source)
    return raw


class _TooDeep(Exception):
    """A YAML node graph deeper than MAX_DEPTH, or one that refers to itself."""


def _expanded_size(node: Any, memo: dict[int, int], depth: int = 0, open_: set[int] | None = None) -> int:
    """How many values a composed YAML node becomes once aliases and merge keys
    are expanded (each shared node counted every time it is used), computed
    on the node graph before anything is built: a merge-key bomb is refused
    without expanding it."""
    key = id(node)
    if key in memo:
        return memo[key]
    open_ = set() if open_ is None else open_
    if depth > MAX_DEPTH or key in open_:
        raise _TooDeep
    open_.add(key)
    if isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo, depth + 1, open_) + _expanded_size(v, memo, depth + 1, open_)
                       for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(v, memo, depth + 1, open_) for v in node.value)
    else:
        size = 1
    open_.discard(key)
    memo[key] = min(size, MAX_NODES + 1)
    return memo[key]


def _check_shape(raw: Any, source: str) -> None:
    """Refuse alias bombs, self-referencing and absurdly deep data before anything walks it recursively."""
    stack, nodes = [(raw, 1)], 0
    while stack:
        node, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise ConfigError(source, "", f"more than {MAX_NODES} values once YAML aliases (*name) are expanded; "
                                          "a model has a few hundred")
        if depth > MAX_DEPTH:
            raise ConfigError(source, "", f"YAML nested more than {MAX_DEPTH} levels deep")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)


def parse_override(text: str) -> tuple[str, Any]:
    """`timing.capture_boot=20s` -> ("timing.capture_boot", "20s") with YAML scalar typing."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError("--set", "", "expected KEY=VALUE, e.g. --set timing.capture_boot=20s")
    try:
        return key.strip(), yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        return key.strip(), value
    except RecursionError:
        raise ConfigError("--set", key.strip(), f"value nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as e:     # an integer of more than 4300 digits
        raise ConfigError("--set", key.strip(), f"a value YAML cannot read: {e}".split(";")[0]) from None


def set_dotted(data: dict, key: str, value: Any) -> None:
    """Set `a.b.0.c` (list index) or `devices.nic0.start` (list item by name) in raw data."""
    parts = key.split(".")
    if not all(parts):
        raise ConfigError("--set", key, "empty part in the dotted key (write e.g. devices.eth0.start)")
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            idx = _list_index(node, part, ".".join(parts[: i + 1]))
            if last:
                node[idx] = value
                return
            node = node[idx]
        elif isinstance(node, dict):
            if last:
                node[part] = value
                return
            if not isinstance(node.get(part), (dict, list)):
                node[part] = {}
            node = node[part]
        else:
            raise ConfigError("--set", ".".join(parts[:i]), f"is {_describe(node)}, not a mapping or list, "
                                                             f"so it has no {part!r}")


def _list_index(node: list, part: str, path: str) -> int:
    if part.lstrip("-").isdigit():
        idx = int(part)
        if not -len(node) <= idx < len(node):
            raise ConfigError("--set", path, f"index {idx} out of range (the list has {len(node)} items)")
        return idx
    names = [item.get("name") for item in node if isinstance(item, dict) and item.get("name") is not None]
    if part in names:
        return names.index(part)
    known = f"; names: {', '.join(map(str, names))}" if names else "; the list has no named items"
    parent = path.rpartition(".")[0] or "the list"
    raise ConfigError("--set", path, f"no item named {part!r} in {parent}{_did_you_mean(part, names)}{known}")


def validate_model(raw: Any, source: str) -> ModelConfig:
    """Validate raw YAML data into a ModelConfig or raise ConfigError naming the field."""
    if raw is None:
        raise ConfigError(source, "", "the file is empty; expected a model mapping "
                                      "(name:, arch:, cpus:, memory:, ... as in models/*.yaml)")
    if not isinstance(raw, dict):
        raise ConfigError(source, "", f"expected a mapping of model fields (name:, arch:, cpus:, memory:, ...) "
                                      f"at the top level, got {_describe(raw)}")
    try:
        model = ModelConfig.model_validate(raw)
    except ValidationError as e:
        raise config_error(e, source, ModelConfig, raw) from None
    _fill_era_defaults(model)
    try:
        _check_consistency(model)
    except _FieldError as e:
        raise ConfigError(source, e.field, str(e)) from None
    return model


def load_model(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> ModelConfig:
    raw = read_yaml(path)
    if isinstance(raw, dict):
        raw = copy.deepcopy(raw)
        for text in overrides:
            try:
                set_dotted(raw, *parse_override(text))
            except ConfigError as e:
                shown = text if len(text) <= 80 else text[:77] + "..."
                raise ConfigError(str(path), e.field, f"--set {shown}: {e.message}") from None
        _check_shape(raw, str(path))
    model = validate_model(raw, str(path))
    image = model.kexec.capture_kernel_image
    if image is not None and not Path(image).is_absolute():
        model.kexec.capture_kernel_image = str(Path(path).parent / image)     # relative to the model file
    return model


def model_from_dict(raw: dict, source: str = "<model>", overrides: dict[str, Any] | None = None) -> ModelConfig:
    raw = copy.deepcopy(raw)
    for key, value in (overrides or {}).items():
        set_dotted(raw, key, value)
    return validate_model(raw, source)


# ---------------------------------------------------------------- pydantic errors, in words
def _describe(v: Any) -> str:
    """The offending value as a reader would name it."""
    if v is None:
        return "nothing (null)"
    if isinstance(v, bool):
        return f"{str(v).lower()} (a boolean)"
    if isinstance(v, dict):
        return "a mapping"
    if isinstance(v, (list, tuple)):
        return "a list"
    if isinstance(v, str):
        return repr(v) if len(v) <= 60 else repr(v[:57] + "...")
    return repr(v)


def _num(v: Any) -> Any:
    return int(v) if isinstance(v, float) and v.is_integer() else v


_EXPECTED = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "a whole number",
    "float_type": "a number", "float_parsing": "a number", "finite_number": "a finite number",
    "bool_type": "true or false", "bool_parsing": "true or false",
    "string_type": "a string", "dict_type": "a mapping (key: value lines)",
    "model_type": "a mapping (key: value lines)", "model_attributes_type": "a mapping (key: value lines)",
    "list_type": "a list (lines starting with '- ')",
}


def config_error(e: ValidationError, source: str, root: type[BaseModel], raw: Any) -> ConfigError:
    """The first pydantic error as one line naming the field (a misspelt key first:
    it also makes the right one "missing"), for models and experiment files alike."""
    errors = e.errors(include_url=False)
    err = next((x for x in errors if x["type"] == "extra_forbidden"), errors[0])
    loc = tuple(err["loc"])
    ctx = err.get("ctx") or {}
    if err["type"] == "field_error":
        loc = loc + (ctx["field"],)
    elif err["type"] in ("union_tag_invalid", "union_tag_not_found"):
        loc = loc + ("kind",)
    field = _readable_loc(loc, raw)
    return ConfigError(source, field, _message(err, root, loc))


def _message(err: dict, root: type[BaseModel], loc: tuple) -> str:
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    is_key = bool(loc) and loc[-1] == "[key]"
    if kind == "extra_forbidden":
        known = _known_fields(root, loc[:-1])
        hint = _did_you_mean(loc[-1], known) or (f"; known keys: {', '.join(known)}" if known else "")
        return f"unknown key {str(loc[-1])!r}{hint}"
    if kind == "missing":
        choices = _literal_choices(root, loc)
        return "required field is missing" + (f" (one of {choices})" if choices else "")
    if kind == "union_tag_invalid":
        tag = ctx.get("tag")
        return (f"unknown device kind {tag!r}{_did_you_mean(tag, DEVICE_KINDS)}; "
                f"kinds: {', '.join(DEVICE_KINDS)}")
    if kind == "union_tag_not_found":
        return f"every device needs a kind: one of {', '.join(DEVICE_KINDS)}"
    if kind == "literal_error":
        expected = ctx.get("expected", "")
        options = re.findall(r"'([^']*)'", expected)
        return f"expected one of {expected.replace(' or ', ', ')}, got {_describe(value)}{_did_you_mean(value, options)}"
    if kind in _EXPECTED:
        what = _EXPECTED[kind]
        if is_key:
            return f"keys here must be {what}, got {_describe(value)}"
        return f"expected {what}, got {_describe(value)}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        op = {"greater_than_equal": ("at least", "ge"), "greater_than": ("greater than", "gt"),
              "less_than_equal": ("at most", "le"), "less_than": ("less than", "lt")}[kind]
        return f"must be {op[0]} {_num(ctx.get(op[1]))}, got {_describe(value)}"
    if kind == "too_short":
        return f"needs at least {ctx.get('min_length')} item(s), got {ctx.get('actual_length')}"
    if kind == "too_long":
        return f"takes at most {ctx.get('max_length')} item(s), got {ctx.get('actual_length')}"
    if kind == "string_pattern_mismatch":
        return (f"must be a plain identifier (letters, digits and _, not starting with a digit), "
                f"e.g. eth0, got {_describe(value)}")
    return err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")


def _is_tag(part: Any) -> bool:
    """pydantic's internal loc parts: validator wrappers, union tags, dict-key markers."""
    return isinstance(part, str) and (part in DEVICE_KINDS or part == "[key]" or
                                      bool(re.match(r"^[\w-]+\[.*\]$", part)))


def _readable_loc(loc: tuple, raw: Any) -> str:
    """Drop pydantic's discriminator/validator tags so the path matches the YAML."""
    out, node = [], raw
    for part in loc:
        if isinstance(node, list) and isinstance(part, int):
            out.append(str(part))
            node = node[part] if part < len(node) else None
        elif isinstance(node, dict) and part in node:
            out.append(str(part))
            node = node[part]
        elif _is_tag(part):
            continue
        else:
            out.append(str(part))
            node = None
    return ".".join(out)


def _known_fields(root: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the sub-model at `loc` (for did-you-mean)."""
    cls: Any = root
    for part in loc:
        if isinstance(part, int) or cls is None:
            continue
        if part in DEVICE_KINDS:
            cls = DEVICE_KINDS[part]
            continue
        if _is_tag(part):
            continue
        field = getattr(cls, "model_fields", {}).get(part)
        cls = _model_of(field.annotation) if field else None
    return list(getattr(cls, "model_fields", {}).keys())


def _literal_choices(root: type[BaseModel], loc: tuple) -> str:
    """`'i386', 'x86_64'` when the missing field at `loc` is a Literal."""
    if not loc:
        return ""
    cls: Any = root
    for part in loc[:-1]:
        if isinstance(part, int) or cls is None or _is_tag(part):
            if part in DEVICE_KINDS:
                cls = DEVICE_KINDS[part]
            continue
        field = getattr(cls, "model_fields", {}).get(part)
        cls = _model_of(field.annotation) if field else None
    field = getattr(cls, "model_fields", {}).get(loc[-1]) if cls is not None else None
    args = getattr(field.annotation, "__args__", ()) if field else ()
    if field and getattr(field.annotation, "__origin__", None) is Literal:
        return ", ".join(repr(a) for a in args)
    return ""


def _model_of(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_of(arg)
        if found is not None:
            return found
    return None
