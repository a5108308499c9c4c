"""Read the emulated NIC's RX ring state from QEMU while the VM is stopped.

e1000 (Intel 8254x; Linux drivers/net/ethernet/intel/e1000/e1000_hw.h, QEMU
hw/net/e1000_regs.h): registers in BAR0 MMIO at RCTL 0x0100 (bit 1 EN),
RDBAL 0x2800, RDBAH 0x2804, RDLEN 0x2808, RDH 0x2810, RDT 0x2818.  The
hardware owns descriptors RDH..RDT-1 and stops when RDH == RDT (QEMU
hw/net/e1000.c e1000_has_rxbufs).  A legacy RX descriptor is 16 bytes:
buffer_addr u64, length u16, csum u16, status u8 (bit 0 DD), errors u8,
special u16 (e1000_hw.h struct e1000_rx_desc).  BAR0 comes from QMP
`query-pci` after the firmware assigned it; registers are read with HMP `xp`.

virtio-net: QMP `x-query-virtio` finds the device, and
`x-query-virtio-queue-status` (qapi/virtio.json) gives queue 0's (receiveq1)
descriptor table, avail (driver) and used (device) ring addresses, vring size
and the device's last_avail_idx.  The driver's avail->idx is read from guest
RAM (struct vring_avail {u16 flags; u16 idx; u16 ring[]},
include/uapi/linux/virtio_ring.h), so free = avail->idx - last_avail_idx.
"""

from __future__ import annotations

from . import LabError

E1000_IDS = {(0x8086, 0x100E)}
E1000_REGS = {"RCTL": 0x0100, "RDBAL": 0x2800, "RDBAH": 0x2804, "RDLEN": 0x2808, "RDH": 0x2810, "RDT": 0x2818}


def _pci_devices(qmp) -> list[dict]:
    devs = []

    def walk(bus):
        for dev in bus.get("devices", []):
            devs.append(dev)
            if "pci_bridge" in dev and "bus" in dev["pci_bridge"]:
                walk(dev["pci_bridge"]["bus"])

    for bus in qmp.execute("query-pci"):
        walk(bus)
    return devs


def e1000_device(qmp) -> dict:
    for dev in _pci_devices(qmp):
        if (dev["id"]["vendor"], dev["id"]["device"]) in E1000_IDS:
            return dev
    raise LabError("e1000 not found in query-pci")


def e1000_bar0(qmp) -> int:
    for reg in e1000_device(qmp).get("regions", []):
        if reg.get("bar") == 0 and reg.get("type") == "memory":
            return int(reg["address"])
    raise LabError("e1000 BAR0 unassigned")


def e1000_bdf(qmp) -> tuple[int, int, int]:
    dev = e1000_device(qmp)
    return dev["bus"], dev["slot"], dev["function"]


def read_e1000(qmp) -> dict:
    bar0 = e1000_bar0(qmp)
    regs = {name: qmp.read_phys(bar0 + off, 1, "w")[0] for name, off in E1000_REGS.items()}
    regs["bar0"] = bar0
    ring = (regs["RDBAH"] << 32) | regs["RDBAL"]
    n = regs["RDLEN"] // 16
    return {
        "kind": "e1000",
        "registers": regs,
        "ring_base": ring,
        "ring_len": n,
        "rdh": regs["RDH"],
        "rdt": regs["RDT"],
        "rx_enabled": bool(regs["RCTL"] & 0x2),
        "hw_owned": (regs["RDT"] - regs["RDH"]) % n if n else 0,
    }


def virtio_net_path(qmp) -> str:
    for dev in qmp.execute("x-query-virtio"):
        if dev.get("name") == "virtio-net":
            return dev["path"]
    raise LabError("virtio-net not found in x-query-virtio")


def read_virtio(qmp) -> dict:
    path = virtio_net_path(qmp)
    q = qmp.execute("x-query-virtio-queue-status", path=path, queue=0)
    status = qmp.execute("x-query-virtio-status", path=path)
    avail = int(q.get("vring-avail", 0))
    avail_idx = None
    if avail:
        avail_idx = qmp.read_phys(avail + 2, 1, "h")[0]
    last = int(q.get("last-avail-idx", 0))
    return {
        "kind": "virtio-net",
        "path": path,
        "queue": q,
        "device_status": status.get("status"),
        "ring_base": int(q.get("vring-desc", 0)),
        "avail_addr": avail,
        "used_addr": int(q.get("vring-used", 0)),
        "ring_len": int(q.get("vring-num", 0)),
        "last_avail_idx": last,
        "avail_idx": avail_idx,
        "hw_owned": ((avail_idx - last) & 0xFFFF) if avail_idx is not None else None,
    }


def read(qmp, nic: str) -> dict:
    try:
        return read_e1000(qmp) if nic == "e1000" else read_virtio(qmp)
    except LabError as exc:
        return {"kind": nic, "error": str(exc)}
