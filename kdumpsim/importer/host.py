"""Read a machine's /proc and /sys (or a saved copy under `root`) into a model.

What comes from where (every value in the YAML names its file in a comment):

- /proc/iomem: top-level lines -> memory.iomem; nested "Kernel code" ..
  "Kernel bss" -> kernel.image (where this boot's kernel is); nested "Crash
  kernel" -> the reservation, written as kexec.crashkernel=SIZE@BASE.
- /proc/cmdline: crashkernel= (used when /proc/iomem has no reservation),
  intel_iommu= / amd_iommu= / iommu= (the IOMMU's first-kernel mode).
- /sys/kernel/kexec_crash_size, kexec_crash_loaded: cross-checks, reported.
- --kdump-log FILE: a capture kernel's boot log -> timing and each device's
  probe_at / capture_driver (kdumpsim/importer/kdumplog.py).
- The kdump kernel and initrd kexec loads (--kdump-kernel/--kdump-initrd, or
  where the distribution keeps them: KDUMP_FILES) -> the kernel segment's
  sizes from its setup header, kexec.initrd_size from the initrd's size; the
  initrd decides most of the capture kernel's memory need.
- /sys/devices/system/cpu/online, cpu*/topology/physical_package_id: CPUs, sockets.
- /sys/devices/system/node/online: NUMA nodes.
- /sys/bus/pci/devices/*/{class,vendor,device,driver,numa_node,iommu_group,dma_mask_bits}:
  devices, mapped to a kind by PCI_TABLE; the rest listed, never guessed.
- /sys/class/iommu: an IOMMU (dmar* Intel VT-d, ivhd* AMD-Vi).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdumpsim.errors import ConfigError
from kdumpsim.units import MiB, fmt_size

MAX_READ = 4 * MiB          # /proc/iomem of a big machine is tens of KiB

# ---------------------------------------------------------------- the sourced table
# (kind, descriptors or queue size, needs_reset_devices, source)
NIC_DRIVERS: dict[str, tuple[int, str]] = {
    # docs/SOURCES.md §11: E1000_DEFAULT_RXD 256 (e1000.h); e1000_probe resets the hardware unconditionally.
    "e1000": (256, "docs/SOURCES.md §11: E1000_DEFAULT_RXD 256; e1000_probe resets unconditionally"),
    # The other Intel drivers: default ring sizes from their headers (e1000e.h E1000_DEFAULT_RXD 256,
    # igb.h IGB_DEFAULT_RXD 256, ixgbe.h IXGBE_DEFAULT_RXD 512); their probe's reset is assumed
    # like e1000's (not yet in docs/SOURCES.md).
    "e1000e": (256, "e1000e.h E1000_DEFAULT_RXD 256; probe reset assumed as e1000"),
    "igb": (256, "igb.h IGB_DEFAULT_RXD 256; probe reset assumed as e1000"),
    "ixgbe": (512, "ixgbe.h IXGBE_DEFAULT_RXD 512; probe reset assumed as e1000"),
}
VIRTIO_VENDOR = 0x1AF4
VIRTIO_NET_IDS = {0x1000: "transitional virtio-net", 0x1041: "modern virtio-net (0x1040 + device type 1)"}
CLASS_ETHERNET = 0x0200
CLASS_NVME = 0x010802
CLASS_NAMES = {0x06: "bridge", 0x03: "display", 0x01: "storage", 0x02: "network", 0x0C: "serial bus",
               0x04: "multimedia", 0x08: "system peripheral", 0xFF: "unassigned class"}
VIRTIO_NAMES = {0x1001: "virtio-blk (legacy)", 0x1042: "virtio-blk", 0x1004: "virtio-scsi", 0x1048: "virtio-scsi",
                0x1002: "virtio-balloon", 0x1045: "virtio-balloon", 0x1005: "virtio-rng", 0x1044: "virtio-rng",
                0x1003: "virtio-console", 0x1043: "virtio-console", 0x1053: "virtio-vsock"}

KERNEL_LINES = ("Kernel code", "Kernel rodata", "Kernel data", "Kernel bss")
_IOMEM_LINE = re.compile(r"^( *)([0-9a-fA-F]+)-([0-9a-fA-F]+) : (.*)$")


@dataclass
class IomemLine:
    depth: int
    start: int
    end: int            # inclusive
    name: str
    lineno: int


@dataclass
class PciDevice:
    slot: str
    cls: int
    vendor: int
    device: int
    driver: str | None
    numa_node: int
    iommu_group: str | None
    dma_bits: int | None
    netdev: str | None
    blockdev: str | None


@dataclass
class Imported:
    """What `import_tree` found: the model as YAML text, and what the report says."""
    yaml_text: str
    raw: dict[str, Any]
    kernel: tuple[int, int] | None          # [start, end] inclusive, from /proc/iomem's Kernel lines
    crash_kernel: tuple[int, int] | None    # [start, end] inclusive, /proc/iomem "Crash kernel"
    notes: list[str] = field(default_factory=list)
    unclassified: list[str] = field(default_factory=list)


class _Tree:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, rel: str) -> Path:
        return self.root / rel.lstrip("/")

    def shown(self, rel: str) -> str:
        return rel if str(self.root) == "/" else str(self.path(rel))

    def read(self, rel: str, required: bool = False) -> str | None:
        p = self.path(rel)
        try:
            with open(p, "rb") as fh:     # in pieces: procfs refuses one huge read (ENOMEM)
                data = b""
                while len(data) <= MAX_READ:
                    piece = fh.read(65536)
                    if not piece:
                        break
                    data += piece
        except FileNotFoundError:
            if required:
                raise ConfigError(self.shown(rel), "", "no such file (give --root DIR holding proc/ and sys/ "
                                                       "of the machine, or run on it)") from None
            return None
        except IsADirectoryError:
            raise ConfigError(self.shown(rel), "", "is a directory, expected a file") from None
        except PermissionError:
            raise ConfigError(self.shown(rel), "", "permission denied") from None
        except OSError as e:
            raise ConfigError(self.shown(rel), "", f"cannot read: {e.strerror or e}") from None
        if len(data) > MAX_READ:
            raise ConfigError(self.shown(rel), "", f"larger than {MAX_READ // MiB} MiB; not a /proc or /sys file")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(self.shown(rel), "", "not UTF-8 text") from None

    def link(self, rel: str) -> str | None:
        p = self.path(rel)
        if p.is_symlink():
            return Path(str(p.readlink())).name
        if p.is_dir():          # a saved tree may hold the target as a directory or a file naming it
            return None
        text = self.read(rel)
        return text.strip() or None if text is not None else None

    def listdir(self, rel: str) -> list[str]:
        p = self.path(rel)
        try:
            return sorted(x.name for x in p.iterdir())
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as e:
            raise ConfigError(self.shown(rel), "", f"cannot list: {e.strerror or e}") from None


# Where distributions keep the kernel and initrd that kexec -p loads (docs/SOURCES.md §14):
# Debian/Ubuntu kdump-tools (/etc/default/kdump-tools KDUMP_KERNEL, KDUMP_INITRD), then
# RHEL/Fedora kdumpctl (/boot/vmlinuz-$(uname -r), /boot/initramfs-$(uname -r)kdump.img).
KDUMP_FILES = (("/var/lib/kdump/vmlinuz", "/var/lib/kdump/initrd.img"),
               ("/boot/vmlinuz-{release}", "/boot/initramfs-{release}kdump.img"))


# ---------------------------------------------------------------- parsers
def parse_iomem(text: str, source: str) -> list[IomemLine]:
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _IOMEM_LINE.match(line.rstrip())
        if not m:
            raise ConfigError(source, f"line {n}", f"cannot parse {line[:60]!r}: expected "
                                                    "'  start-end : name' as /proc/iomem prints it")
        start, end = int(m.group(2), 16), int(m.group(3), 16)
        if end < start:
            raise ConfigError(source, f"line {n}", f"{m.group(2)}-{m.group(3)} ends before it starts")
        out.append(IomemLine(len(m.group(1)) // 2, start, end, m.group(4).strip(), n))
    if not out:
        raise ConfigError(source, "", "empty: expected /proc/iomem lines such as '00100000-bfffffff : System RAM'")
    if all(x.start == 0 and x.end == 0 for x in out):
        raise ConfigError(source, "", "every address is 0: /proc/iomem read without root hides the addresses; "
                                      "read it as root (sudo cat /proc/iomem > FILE)")
    return out


def parse_cpulist(text: str, source: str) -> list[int]:
    """'0-3,8' -> [0, 1, 2, 3, 8] (the kernel's cpulist format)."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi or lo)
        except ValueError:
            raise ConfigError(source, "", f"cannot parse {text.strip()[:40]!r}: expected a list such as 0-3,8") from None
        if b < a or b - a > 65536:
            raise ConfigError(source, "", f"bad range {part!r}")
        cpus.extend(range(a, b + 1))
    return cpus


def _hex(text: str | None, source: str) -> int | None:
    if text is None:
        return None
    try:
        return int(text.strip(), 16)
    except ValueError:
        raise ConfigError(source, "", f"expected a hex number such as 0x8086, got {text.strip()[:30]!r}") from None


def _int(text: str | None, source: str) -> int | None:
    if text is None or not text.strip():
        return None
    try:
        return int(text.strip(), 0)
    except ValueError:
        raise ConfigError(source, "", f"expected a number, got {text.strip()[:30]!r}") from None


# ---------------------------------------------------------------- the import
def import_tree(root: str | Path = "/", name: str | None = None, arch: str = "x86_64",
                kdump_log: str | Path | None = None, kdump_kernel: str | Path | None = None,
                kdump_initrd: str | Path | None = None) -> Imported:
    t = _Tree(root)
    notes: list[str] = []
    src_iomem = t.shown("/proc/iomem")
    iomem = parse_iomem(t.read("/proc/iomem", required=True) or "", src_iomem)
    top = [x for x in iomem if x.depth == 0]
    kernel_lines = [x for x in iomem if x.depth > 0 and x.name in KERNEL_LINES]
    kernel = (min(x.start for x in kernel_lines), max(x.end for x in kernel_lines)) if kernel_lines else None
    crash_lines = [x for x in iomem if x.depth > 0 and x.name == "Crash kernel"]
    cmdline = (t.read("/proc/cmdline") or "").strip()
    params = _params(cmdline)

    c: dict[str, str] = {}      # dotted key -> provenance comment
    raw: dict[str, Any] = {}
    host = (t.read("/proc/sys/kernel/hostname") or t.read("/etc/hostname") or "").strip()
    raw["name"] = name or re.sub(r"[^A-Za-z0-9_.-]", "_", host) or "imported"
    raw["description"] = f"imported from {'this host' if str(t.root) == '/' else t.root} by kdumpsim import"
    raw["arch"] = arch
    c["arch"] = "not read: --arch (default x86_64)"
    raw["era"] = "modern"

    # CPUs, sockets, NUMA nodes
    src_online = t.shown("/sys/devices/system/cpu/online")
    online = t.read("/sys/devices/system/cpu/online")
    cpus = parse_cpulist(online, src_online) if online else []
    packages = set()
    for cpu in cpus:
        rel = f"/sys/devices/system/cpu/cpu{cpu}/topology/physical_package_id"
        pkg = _int(t.read(rel), t.shown(rel))
        if pkg is not None:
            packages.add(pkg)
    raw["cpus"] = {"count": max(1, len(cpus)), "sockets": max(1, min(len(packages), len(cpus) or 1))}
    c["cpus.count"] = src_online if cpus else "not found: /sys/devices/system/cpu/online (assumed 1)"
    c["cpus.sockets"] = ("/sys/devices/system/cpu/cpu*/topology/physical_package_id" if packages
                         else "not found: physical_package_id (assumed 1)")
    src_nodes = t.shown("/sys/devices/system/node/online")
    nodes_text = t.read("/sys/devices/system/node/online")
    node_ids = parse_cpulist(nodes_text, src_nodes) if nodes_text else [0]
    node_index = {n: i for i, n in enumerate(node_ids)}
    if len(node_ids) > 64:
        raise ConfigError(src_nodes, "", f"{len(node_ids)} NUMA nodes: at most 64 are simulated")
    raw["memory"] = {"numa_nodes": len(node_ids),
                     "iomem": [f"{x.start:08x}-{x.end:08x} : {x.name}" for x in top]}
    c["memory.numa_nodes"] = src_nodes if nodes_text else "not found: /sys/devices/system/node/online (assumed 1)"
    c["memory.iomem"] = f"{src_iomem} (top-level lines; nested lines are parts of these)"

    # the reservation
    raw["kexec"] = {}
    ck_param = params.get("crashkernel", [])
    crash = None
    if crash_lines:
        main = max(crash_lines, key=lambda x: x.end - x.start)
        crash = (main.start, main.end)
        size = main.end - main.start + 1
        raw["kexec"]["crashkernel"] = f"{fmt_size(size)}@{fmt_size(main.start) if main.start else '0'}"
        c["kexec.crashkernel"] = (f"{src_iomem} line {main.lineno}: Crash kernel {main.start:x}-{main.end:x}"
                                  + (f" (/proc/cmdline asked crashkernel={','.join(ck_param)})" if ck_param else ""))
        for other in crash_lines:
            if other is not main:
                notes.append(f"a second reservation {other.start:#x}-{other.end:#x} (crashkernel=...,low) is not "
                             "modelled: the model has one reservation")
    elif ck_param:
        raw["kexec"]["crashkernel"] = ck_param[0]
        c["kexec.crashkernel"] = (f"/proc/cmdline crashkernel={ck_param[0]} (no 'Crash kernel' line in "
                                  f"{src_iomem}: placed by the simulated kernel)")
    else:
        raw["kexec"]["crashkernel"] = "256M"
        c["kexec.crashkernel"] = "not reserved on this machine: 256M placed automatically is an assumption"
        notes.append("this machine reserves no crash kernel (no 'Crash kernel' in /proc/iomem, no crashkernel= "
                     "on /proc/cmdline): the model assumes crashkernel=256M; try `kdumpsim recommend`")
    crash_size = _int(t.read("/sys/kernel/kexec_crash_size"), t.shown("/sys/kernel/kexec_crash_size"))
    loaded = _int(t.read("/sys/kernel/kexec_crash_loaded"), t.shown("/sys/kernel/kexec_crash_loaded"))
    if crash_size is not None:
        notes.append(f"/sys/kernel/kexec_crash_size: {crash_size} bytes"
                     + (f" ({'matches' if crash and crash_size == crash[1] - crash[0] + 1 else 'differs from'} "
                        "the 'Crash kernel' line)" if crash else ""))
    if loaded is not None:
        notes.append(f"/sys/kernel/kexec_crash_loaded: {loaded} "
                     f"({'a capture kernel is loaded' if loaded else 'no capture kernel is loaded: kdump is not armed'})")
    _kdump_files(t, raw, c, notes, kdump_kernel, kdump_initrd)
    if kernel_lines:
        # kernel.image: [start, end) per line, so the model's first kernel sits where this one does
        # (a KASLR kernel moves at each boot: this is the boot the files were read in).
        raw["kernel"] = {"image": [[f"{x.start:#x}", f"{x.end + 1:#x}"] for x in kernel_lines]}
        c["kernel.image"] = (f"{src_iomem}: {', '.join(x.name for x in kernel_lines)} "
                             "(this boot's place; with KASLR the next boot's differs)")

    # the IOMMU
    iommus = t.listdir("/sys/class/iommu")
    iommu_off = any(v == "off" for k in ("intel_iommu", "amd_iommu", "iommu") for v in params.get(k, []))
    passthrough = "pt" in params.get("iommu", []) or "pt" in params.get("intel_iommu", [])
    topo: dict[str, Any] = {}
    if iommus and not iommu_off:
        vendor = "amd" if any(i.startswith("ivhd") for i in iommus) else "intel"
        topo["iommu"] = {"vendor": vendor, "first_kernel": "passthrough" if passthrough else "translate",
                         "capture_kernel": "copy_tables"}
        c["topology.iommu"] = (f"{t.shown('/sys/class/iommu')}: {', '.join(iommus)}"
                               + ("; iommu=pt on /proc/cmdline" if passthrough else "")
                               + "; capture_kernel copy_tables is the capture kernel's default, not read")
    elif iommus:
        c["topology.iommu"] = "none: /proc/cmdline turns the IOMMU off"
    # PCI devices
    devices, buses, unclassified, slots = _pci(t, node_index, bool(topo.get("iommu")), c)
    topo["buses"] = buses
    raw["topology"] = topo
    raw["devices"] = devices
    if kdump_log is not None:
        from kdumpsim.importer.kdumplog import apply_kdump_log
        apply_kdump_log(raw, c, notes, slots, kdump_log)
    for u in unclassified:
        notes.append(f"unclassified PCI device {u}")
    text = _emit(raw, c, notes, unclassified)
    return Imported(text, raw, kernel, crash, notes, unclassified)


def _kdump_files(t: _Tree, raw: dict[str, Any], c: dict[str, str], notes: list[str],
                 kernel: str | Path | None, initrd: str | Path | None) -> None:
    """The capture kernel's sizes and the initrd's, from the files kexec -p loads."""
    from kdumpsim.formats.bzimage import BzImageError, read_bzimage
    release = (t.read("/proc/sys/kernel/osrelease") or "").strip()
    found: list[tuple[Path, str]] = []       # (path, what names it)
    for given, i in ((kernel, 0), (initrd, 1)):
        if given is not None:
            found.append((Path(given), f"--kdump-{('kernel', 'initrd')[i]} {given}"))
            continue
        paths = [pair[i].format(release=release) for pair in KDUMP_FILES if release or "{" not in pair[i]]
        hit = next((rel for rel in paths if t.path(rel).is_file()), None)
        found.append((t.path(hit), t.shown(hit)) if hit else (Path(), ""))
    (kpath, ksrc), (ipath, isrc) = found
    if ksrc:
        try:
            bz = read_bzimage(kpath)
        except (OSError, BzImageError) as e:
            raise ConfigError(ksrc.removeprefix("--kdump-kernel "), "", f"not a readable vmlinuz: {e}") from None
        raw["kexec"]["capture_kernel_size"] = bz.payload_size
        raw["kexec"]["capture_kernel_init_size"] = bz.init_size
        c["kexec.capture_kernel_size"] = f"{ksrc}: the protected-mode kernel after {bz.setup_size} bytes of setup"
        c["kexec.capture_kernel_init_size"] = f"{ksrc}: setup header init_size (offset 0x260)"
    if isrc:
        try:
            size = ipath.stat().st_size
        except OSError as e:
            raise ConfigError(isrc.removeprefix("--kdump-initrd "), "", f"cannot read: {e.strerror or e}") from None
        raw["kexec"]["initrd_size"] = size
        c["kexec.initrd_size"] = f"{isrc}: its size"
    else:
        notes.append("the kdump initrd was not found (" + ", ".join(p[1] for p in KDUMP_FILES)
                     + "): kexec.initrd_size is the schema's default, and it decides most of the capture "
                       "kernel's memory need; give --kdump-initrd FILE")


def _params(cmdline: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for word in cmdline.split():
        if word == "--":
            break
        key, sep, value = word.partition("=")
        if sep:
            out.setdefault(key, []).extend(value.split(",") if key != "crashkernel" else [value])
    return out


def _pci(t: _Tree, node_index: dict[int, int], iommu: bool, c: dict[str, str]):
    base = "/sys/bus/pci/devices"
    found: list[PciDevice] = []
    for slot in t.listdir(base):
        d = f"{base}/{slot}"
        cls = _hex(t.read(f"{d}/class"), t.shown(f"{d}/class"))
        vendor = _hex(t.read(f"{d}/vendor"), t.shown(f"{d}/vendor"))
        device = _hex(t.read(f"{d}/device"), t.shown(f"{d}/device"))
        if cls is None or vendor is None or device is None:
            continue
        node = _int(t.read(f"{d}/numa_node"), t.shown(f"{d}/numa_node"))
        net = t.listdir(f"{d}/net") or [n for v in t.listdir(d) if v.startswith("virtio")
                                         for n in t.listdir(f"{d}/{v}/net")]
        found.append(PciDevice(slot, cls, vendor, device, t.link(f"{d}/driver"), node if node and node > 0 else 0,
                               t.link(f"{d}/iommu_group"), _int(t.read(f"{d}/dma_mask_bits"), t.shown(f"{d}/dma_mask_bits")),
                               net[0] if net else None, next(iter(t.listdir(f"{d}/nvme")), None)))
    devices: list[dict[str, Any]] = []
    slots: list[tuple[str, str | None]] = []      # each device's (PCI slot, driver), for --kdump-log
    unclassified: list[str] = []
    used: set[str] = set()
    bus_nodes: set[int] = set()
    for p in found:
        kind, extra, why = _classify(p)
        ident = f"{p.slot} [{p.vendor:04x}:{p.device:04x}] class {p.cls:#08x} driver {p.driver or '(none)'}"
        if kind is None:
            unclassified.append(f"{ident}: {why}")
            continue
        node = node_index.get(p.numa_node, 0)
        bus_nodes.add(node)
        name = _name(p.netdev or p.blockdev or ("nvme" if kind == "storage" else "nic"), used)
        dev: dict[str, Any] = {"name": name, "kind": kind, "bus": f"pci{node}", **extra}
        if p.dma_bits is not None and p.dma_bits <= 32:
            dev["dma_bits"] = 32
        devices.append(dev)
        slots.append((p.slot, p.driver))
        i = len(devices) - 1
        c[f"devices.{i}"] = f"/sys/bus/pci/devices/{p.slot}: {ident.split(' ', 1)[1]}; {why}"
        if p.dma_bits is not None:
            c[f"devices.{i}.dma_bits"] = f"/sys/bus/pci/devices/{p.slot}/dma_mask_bits: {p.dma_bits}"
    buses = [{"name": f"pci{n}", "kind": "pcie", "numa_node": n, **({"iommu": True} if iommu else {})}
             for n in sorted(bus_nodes or {0})]
    c["topology.buses"] = ("one bus per NUMA node that has a device (/sys/bus/pci/devices/*/numa_node)"
                           + ("; behind the IOMMU" if iommu else ""))
    return devices, buses, unclassified, slots


def _classify(p: PciDevice) -> tuple[str | None, dict[str, Any], str]:
    if p.cls >> 8 == CLASS_ETHERNET and p.driver in NIC_DRIVERS:
        rxd, source = NIC_DRIVERS[p.driver]
        return "nic_rx_ring", {"descriptors": rxd}, f"Ethernet, {p.driver}: nic_rx_ring ({source}); traffic is the " \
                                                    "schema's default, not measured"
    if p.vendor == VIRTIO_VENDOR and p.device in VIRTIO_NET_IDS:
        return "virtio_net", {}, f"{VIRTIO_NET_IDS[p.device]}: virtio_net (docs/SOURCES.md §11); traffic is the " \
                                 "schema's default, not measured"
    if p.cls == CLASS_NVME:
        return "storage", {}, "NVMe (class 0x010802): storage (docs/SOURCES.md §11); I/O load is the schema's default"
    if p.cls >> 8 == CLASS_ETHERNET:
        return None, {}, f"Ethernet with driver {p.driver or '(none bound)'}: not in the importer's table"
    if p.vendor == VIRTIO_VENDOR:
        return None, {}, f"{VIRTIO_NAMES.get(p.device, 'virtio device')}: no device kind models its DMA"
    return None, {}, f"{CLASS_NAMES.get(p.cls >> 16, 'class')}: no device kind models its DMA"


def _name(base: str, used: set[str]) -> str:
    from kdumpsim.names import reserved_name
    stem = re.sub(r"[^A-Za-z0-9_]", "_", base)
    if not re.match(r"^[A-Za-z_]", stem):
        stem = "dev_" + stem
    name, n = stem, 0
    while name in used or reserved_name(name):
        n += 1
        name = f"{stem}_{n}"
    used.add(name)
    return name


# ---------------------------------------------------------------- YAML with comments
def _q(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    return json.dumps(str(v))       # a JSON string is a YAML double-quoted scalar


def _comment(text: str | None) -> str:
    return f"   # {text}" if text else ""


def _emit(raw: dict[str, Any], c: dict[str, str], notes: list[str], unclassified: list[str]) -> str:
    L = ["# Imported by `kdumpsim import`. Each value names the file it came from; values the",
         "# machine does not tell (traffic, I/O load, capture-kernel timing) are the schema's defaults.",
         *[f"# note: {n}" for n in notes if not n.startswith("unclassified")]]
    if unclassified:
        L.append("# PCI devices not imported (no device kind fits; listed, not guessed):")
        L += [f"#   {u}" for u in unclassified]
    for key in ("name", "description", "arch", "era"):
        L.append(f"{key}: {_q(raw[key])}{_comment(c.get(key))}")
    L.append("cpus:")
    for key in ("count", "sockets"):
        L.append(f"  {key}: {raw['cpus'][key]}{_comment(c.get('cpus.' + key))}")
    L.append("memory:")
    L.append(f"  numa_nodes: {raw['memory']['numa_nodes']}{_comment(c.get('memory.numa_nodes'))}")
    L.append(f"  iomem:{_comment(c.get('memory.iomem'))}")
    L += [f"    - {_q(line)}" for line in raw["memory"]["iomem"]]
    if "kernel" in raw:
        L.append("kernel:")
        L.append(f"  image:{_comment(c.get('kernel.image'))}")
        L += [f"    - [{_q(s)}, {_q(e)}]" for s, e in raw["kernel"]["image"]]
    L.append("kexec:")
    L.append(f"  crashkernel: {_q(raw['kexec']['crashkernel'])}{_comment(c.get('kexec.crashkernel'))}")
    for key in ("capture_kernel_size", "capture_kernel_init_size", "initrd_size"):
        if key in raw["kexec"]:
            L.append(f"  {key}: {raw['kexec'][key]}{_comment(c.get('kexec.' + key))}")
    if "timing" in raw:
        L.append("timing:")
        L += [f"  {k}: {_q(v)}{_comment(c.get('timing.' + k))}" for k, v in raw["timing"].items()]
    L.append("topology:")
    if "iommu" in raw["topology"]:
        io = raw["topology"]["iommu"]
        L.append(f"  iommu:{_comment(c.get('topology.iommu'))}")
        L += [f"    {k}: {_q(v)}" for k, v in io.items()]
    elif c.get("topology.iommu"):
        L.append(f"  # iommu: {c['topology.iommu']}")
    L.append(f"  buses:{_comment(c.get('topology.buses'))}")
    for b in raw["topology"]["buses"]:
        L.append("    - {" + ", ".join(f"{k}: {_q(v)}" for k, v in b.items()) + "}")
    if not raw["devices"]:
        L.append("devices: []   # no PCI device of a kind the simulator models (/sys/bus/pci/devices)")
    else:
        L.append("devices:")
    for i, d in enumerate(raw["devices"]):
        L.append(f"  - name: {_q(d['name'])}{_comment(c.get(f'devices.{i}'))}")
        for k, v in d.items():
            if k != "name":
                L.append(f"    {k}: {_q(v)}{_comment(c.get(f'devices.{i}.{k}'))}")
    return "\n".join(L) + "\n"


def check(imported: Imported, source: str = "<imported>") -> str | None:
    """None when the imported model validates and lays out, else the one-line reason."""
    import yaml

    from kdumpsim.config.model import validate_model
    from kdumpsim.errors import KdumpsimError, LayoutError
    from kdumpsim.kexec import load_capture_kernel
    from kdumpsim.machine.layout import Machine
    try:
        cfg = validate_model(yaml.safe_load(imported.yaml_text), source)
        load_capture_kernel(Machine(cfg, 0))
    except LayoutError as e:
        return f"{source}: {e.field}: {e}"
    except KdumpsimError as e:
        return str(e)
    return None
