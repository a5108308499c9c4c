"""`python -m kdumpsim.lab measure RUNDIR`: what the NIC did after the panic.

Inputs (written by cycle.py): run.json, traffic.npy, truth.elf (RAM when the
guest wrote PANICKED to pvpanic), disk.img (the /proc/vmcore the capture
kernel dd'd; an ELF core at offset 0) and final.elf (RAM after the dump).

Method (shared REAL-KDUMP-LAB.md, "Analysis"):
- Every tagged frame (traffic.py) is found in the three images and placed by
  physical address through the PT_LOADs (elfcore.py).  A frame is post-panic
  when its sequence number is above the newest one in the truth image
  (delivery is FIFO; send times are not used to decide, since QEMU holds
  frames while the ring is full or the VM is paused).
- The RX buffers the dead driver had posted come from the ring state read at
  the pause (nicstate.py) and the descriptors in the truth image: e1000
  descriptors RDH..RDT-1 are hardware-owned (QEMU hw/net/e1000.c
  e1000_has_rxbufs); a descriptor with DD set (status bit 0) was written back
  but not yet cleaned by the driver (e1000_main.c e1000_clean_rx_irq clears
  status after use).  virtio-net: avail ring entries last_avail_idx..
  avail->idx-1 (include/uapi/linux/virtio_ring.h).
- Pages of the vmcore are compared with the truth and final images; each
  differing page is classed ring (descriptor/used ring), payload (holds a
  post-panic frame or the DMA range of a posted RX buffer), low_backup (below
  640 KiB: kexec_load's /proc/vmcore serves the backup copy there,
  kexec-tools kexec/arch/i386/crashdump-x86.c) or cpu (anything else: the
  panicking CPU between the truth snapshot and the jump).
- Phase times are host monotonic times of serial console lines, relative to
  the host's `cont` (the end of the pvpanic pause; the panic follows within
  milliseconds).
All numbers come from the run's own files; nothing is assumed.
"""

from __future__ import annotations

import bisect
import json
import re
import struct
from collections import Counter
from pathlib import Path

import numpy as np

from . import LabError, traffic
from .elfcore import PAGE, Core
from .iommu import Translator

SCHEMA = "kdumpsim-lab-result/1"
E1000_DESC = 16
VIRTIO_DESC = 16
VIRTIO_NET_HDR = 12      # struct virtio_net_hdr_mrg_rxbuf (mergeable RX buffers)
FCS = 4                  # QEMU e1000 appends a 4-byte FCS unless RCTL.SECRC


# ---------------------------------------------------------------- frames

def scan_frames(core: Core, run_id: int | None = None) -> list[tuple[int, int, int]]:
    """(paddr of the tag, seq, send_ns) of every tagged frame in a core's RAM."""
    out = []
    for off in core.find_all(traffic.TAG):
        parsed = traffic.parse_at(core.buf, off)
        if parsed is None:
            continue
        seq, send_ns, rid = parsed
        if run_id is not None and rid != run_id:
            continue
        pa = core.offset_to_paddr(off)
        if pa is not None:
            out.append((pa, seq, send_ns))
    return out


def frame_start(tag_paddr: int) -> int:
    """Physical address of the Ethernet frame whose tag sits at tag_paddr."""
    return tag_paddr - traffic.ETH_HDR


# ---------------------------------------------------------------- rings

def e1000_buffers(truth: Core, nic: dict, xlate=None, ram=None) -> dict:
    """Posted RX buffers of an e1000 ring read from the truth image.  With an
    IOMMU, `xlate` maps the IOVAs in the registers and descriptors to
    physical addresses; `ram` lists the System RAM ranges."""
    n, base = nic["ring_len"], nic["ring_base"]
    phys = xlate(base) if xlate else base
    in_ram = phys is not None and (not ram or _in_ranges(phys, ram))
    raw = truth.read(phys, n * E1000_DESC) if n and in_ram else None
    if raw is None:
        return {"readable": False, "note": f"ring at {base:#x} is not in guest RAM (an untranslated IOVA?)"}
    descs = np.frombuffer(raw, dtype=np.dtype([("addr", "<u8"), ("len", "<u2"), ("csum", "<u2"),
                                                 ("status", "u1"), ("errors", "u1"), ("special", "<u2")]))
    rdh, rdt = nic["rdh"], nic["rdt"]
    hw = [(rdh + k) % n for k in range((rdt - rdh) % n)]
    dd = [int(i) for i in np.nonzero(descs["status"] & 1)[0]]
    iovas = [int(descs["addr"][i]) for i in hw]
    addrs = [xlate(a) if xlate else a for a in iovas]
    return {
        "readable": True,
        "ring_phys": phys,
        "indices": hw,
        "iovas": iovas,
        "addrs": [a for a in addrs if a is not None],
        "untranslated": sum(1 for a in addrs if a is None),
        "dd_set_indices": dd,
    }


def e1000_written_back(final: Core, ring_phys: int, n: int, xlate=None) -> list[int]:
    """Buffer addresses of the descriptors with DD set in the final image's
    ring: buffers the NIC filled and no driver cleaned (the dead driver
    cleared DD of everything it had processed).  This also catches buffers
    the driver posted between the truth snapshot and the panic."""
    raw = final.read(ring_phys, n * E1000_DESC)
    if raw is None:
        return []
    out = []
    for i in range(n):
        addr, status = struct.unpack_from("<Q4xB", raw, i * E1000_DESC)
        if status & 1 and addr:
            pa = xlate(addr) if xlate else addr
            if pa is not None:
                out.append(pa)
    return out


def virtio_buffers(truth: Core, nic: dict) -> dict:
    n, desc, avail = nic["ring_len"], nic["ring_base"], nic["avail_addr"]
    last, aidx = nic["last_avail_idx"], nic["avail_idx"]
    if not n or aidx is None:
        return {"readable": False, "note": "no virtio queue state"}
    table = truth.read(desc, n * VIRTIO_DESC)
    ring = truth.read(avail, 4 + 2 * n)
    if table is None or ring is None:
        return {"readable": False, "note": "virtio ring not in guest RAM"}
    descs = np.frombuffer(table, dtype=np.dtype([("addr", "<u8"), ("len", "<u4"), ("flags", "<u2"), ("next", "<u2")]))
    aring = np.frombuffer(ring[4:], dtype="<u2")
    truth_aidx = int.from_bytes(ring[2:4], "little")
    heads = [int(aring[(last + k) % n]) for k in range((aidx - last) & 0xFFFF)]
    return {
        "readable": True,
        "indices": heads,
        "addrs": [int(descs["addr"][h]) for h in heads],
        "lens": [int(descs["len"][h]) for h in heads],
        "avail_idx_in_truth": truth_aidx,
    }


def descriptors_after_off(final: Core, nic_truth: dict, nic_final: dict, landed: int,
                          system_ram: list, crash: list) -> dict:
    """e1000 descriptors the NIC consumed after the IOMMU stopped translating:
    it then fetches them from the ring's IOVA taken as a physical address
    (QEMU hw/net/e1000.c e1000_receive_iov reads base + RDH*16 with
    pci_dma_read; a null buffer_addr is skipped).  Where would their buffer
    addresses send the frames?"""
    n = nic_truth["ring_len"]
    consumed = (nic_final["rdh"] - nic_truth["rdh"]) % n
    idx = [(nic_truth["rdh"] + landed + k) % n for k in range(max(0, consumed - landed))]
    out = {"descriptors": len(idx), "read_from": None, "null": 0, "in_ram": 0, "in_reservation": 0,
           "outside_ram": 0, "unreadable": 0, "sample_buffer_addrs": []}
    base = nic_truth["ring_base"]
    out["read_from"] = "ram" if _in_ranges(base, system_ram) else "not RAM (ROM/MMIO or nothing)"
    for i in idx:
        raw = final.read(base + 16 * i, 16)
        if raw is None:
            out["unreadable"] += 1
            continue
        addr = int.from_bytes(raw[:8], "little")
        if len(out["sample_buffer_addrs"]) < 6:
            out["sample_buffer_addrs"].append(hex(addr))
        if addr == 0:
            out["null"] += 1
        elif _in_ranges(addr, crash):
            out["in_reservation"] += 1
            out["in_ram"] += 1
        elif _in_ranges(addr, system_ram):
            out["in_ram"] += 1
        else:
            out["outside_ram"] += 1
    return out


def packing(addrs: list[int]) -> dict:
    """How RX buffers share pages: buffers per page, strides, contiguous page runs."""
    if not addrs:
        return {"buffers": 0}
    s = sorted(addrs)
    pages = sorted({a // PAGE for a in s})
    per_page = Counter(Counter(a // PAGE for a in s).values())
    strides = Counter(b - a for a, b in zip(s, s[1:]))
    runs, run = [], 1
    for a, b in zip(pages, pages[1:]):
        if b == a + 1:
            run += 1
        else:
            runs.append(run)
            run = 1
    runs.append(run)
    return {
        "buffers": len(s),
        "pages": len(pages),
        "buffers_per_page": {str(k): v for k, v in sorted(per_page.items())},
        "top_strides": {hex(k): v for k, v in strides.most_common(5)},
        "page_runs": {"count": len(runs), "max": max(runs), "mean": round(float(np.mean(runs)), 2)},
        "lowest": hex(s[0]),
        "highest": hex(s[-1]),
    }


# ---------------------------------------------------------------- pages

def _segments(core: Core) -> list[tuple[int, int, int]]:
    """(paddr start, paddr end, file offset) of whole pages of RAM loads."""
    out = []
    for ld in core.ram_loads():
        start = (ld.paddr + PAGE - 1) & ~(PAGE - 1)
        end = (ld.paddr + ld.filesz) & ~(PAGE - 1)
        if end > start:
            out.append((start, end, ld.offset + start - ld.paddr))
    return out


def diff_pages(a: Core, b: Core, chunk: int = 32 << 20) -> tuple[np.ndarray, int]:
    """Page paddrs present in both images whose contents differ; and how many
    pages were compared."""
    diffs, compared = [], 0
    for a0, a1, aoff in _segments(a):
        for b0, b1, boff in _segments(b):
            lo, hi = max(a0, b0), min(a1, b1)
            pa = lo
            while pa < hi:
                n = min(chunk, hi - pa)
                x = a.array[aoff + pa - a0: aoff + pa - a0 + n].reshape(-1, PAGE)
                y = b.array[boff + pa - b0: boff + pa - b0 + n].reshape(-1, PAGE)
                idx = np.nonzero((x != y).any(axis=1))[0]
                diffs.append(pa + idx.astype(np.int64) * PAGE)
                compared += n // PAGE
                pa += n
    return (np.concatenate(diffs) if diffs else np.zeros(0, np.int64)), compared


def _pages_of(ranges: list[tuple[int, int]]) -> set[int]:
    out = set()
    for lo, hi in ranges:
        out.update(range(lo & ~(PAGE - 1), hi, PAGE))
    return out


# ---------------------------------------------------------------- serial

def phase_times(record: dict) -> dict:
    """Host times (s, relative to `cont`) and guest uptimes of serial markers."""
    t0 = record["times"]["cont"]
    lines = record["serial"]
    out: dict = {}
    up: dict = {}
    linux_version = [t for t, s in lines if "Linux version" in s]
    if len(linux_version) >= 2:
        out["capture_kernel_start"] = linux_version[1] - t0
    markers = {
        "panic": r"sysrq: Trigger a crash",
        "panic_banner": r"Kernel panic - not syncing",
        "capture_init": r"LAB: CAPTURE INIT",
        "nic_driver_load": r"LAB: LOADING (e1000|virtio-net)",
        "nic_driver_loaded": r"LAB: CAPNIC LOADED",
        "disk_driver_load": r"LAB: LOADING (virtio-blk|ide)",
        "dump_start": r"LAB: DUMP START",
        "dump_end": r"LAB: DUMP END",
    }
    for key, pat in markers.items():
        rx = re.compile(pat)
        for t, s in lines:
            if rx.search(s) and (key not in ("panic", "panic_banner") or t >= t0 - 5):
                out[key] = t - t0
                m = re.search(r"uptime=([0-9.]+)", s)
                if m:
                    up[key] = float(m.group(1))
                break
    size = None
    for _, s in lines:
        m = re.search(r"LAB: VMCORE SIZE (\d+)", s)
        if m:
            size = int(m.group(1))
    res = {k: round(v, 3) for k, v in out.items()}
    res["vmcore_bytes"] = size
    if size and "dump_start" in out and "dump_end" in out and out["dump_end"] > out["dump_start"]:
        res["dump_rate_mb_s"] = round(size / 1e6 / (out["dump_end"] - out["dump_start"]), 1)
    first_up = [s for _, s in lines if "LAB: READY" in s]
    if first_up:
        m = re.search(r"uptime=([0-9.]+)", first_up[0])
        res["first_kernel_ready_uptime"] = float(m.group(1)) if m else None
    res["guest_uptime"] = up
    res["first_kernel_ready_host"] = round(record["times"]["ready"] - record["times"]["start"], 3)
    return res


# ---------------------------------------------------------------- main

def _in_ranges(pa: int, ranges: list[tuple[int, int]]) -> bool:
    return any(lo <= pa < hi for lo, hi in ranges)


def _buffer_index(addrs: list[int], span: int):
    s = sorted(addrs)

    def find(pa: int) -> int | None:
        i = bisect.bisect_right(s, pa) - 1
        if i >= 0 and s[i] <= pa < s[i] + span:
            return s[i]
        return None
    return find


def analyse(record: dict, sent: np.ndarray, truth: Core, vmcore: Core, final: Core) -> dict:
    scen = record["scenario"]
    nic_kind = scen["nic"]
    run_id = record.get("run_id")
    frame_len = record.get("frame_len", scen.get("frame_len", 256))
    iomem = record.get("iomem", [])
    crash = [(r["start"], r["end"] + 1) for r in iomem if r["name"] == "Crash kernel"]
    kimage = [(r["start"], r["end"] + 1) for r in iomem if r["name"].startswith("Kernel ")]
    t_cont = record["times"]["cont"]

    # frames
    f_truth = scan_frames(truth, run_id)
    f_vm = scan_frames(vmcore, run_id)
    f_final = scan_frames(final, run_id)
    max_truth = max((s for _, s, _ in f_truth), default=0)
    post_vm = [(pa, s) for pa, s, _ in f_vm if s > max_truth]
    post_final = [(pa, s) for pa, s, _ in f_final if s > max_truth]
    sent_seq = sent[:, 0] if len(sent) else np.zeros(0, np.int64)
    send_time = {int(q): (int(ns) / 1e9) - t_cont for q, ns in sent}
    post_sent = [int(q) for q in sent_seq if q > max_truth]

    # ring state at the panic and the posted buffers
    nic_truth = record["nic"].get("truth", {})
    nic_final = record["nic"].get("final", {})
    if "error" in nic_truth:
        raise LabError(f"NIC state at the panic was not read: {nic_truth['error']}")
    system_ram = [(r["start"], r["end"] + 1) for r in iomem if r["name"] == "System RAM"]
    mmu = (record.get("iommu") or {}).get("truth") or {}
    xlate = None
    if mmu.get("translation_enabled") and mmu.get("bdf"):
        bus, slot, fn = mmu["bdf"]
        tr = Translator(truth.read, mmu["rtaddr"], bus, (slot << 3) | fn)
        xlate = tr.translate if tr.ok else (lambda a: None)
    if nic_kind == "e1000":
        bufs = e1000_buffers(truth, nic_truth, xlate, system_ram)
        span = frame_len + FCS
        ring_phys = bufs.get("ring_phys", nic_truth["ring_base"])
        ring_ranges = [(ring_phys, ring_phys + nic_truth["ring_len"] * E1000_DESC)]
    else:
        bufs = virtio_buffers(truth, nic_truth)
        span = VIRTIO_NET_HDR + frame_len
        n = nic_truth.get("ring_len", 0)
        ring_ranges = [(nic_truth["ring_base"], nic_truth["ring_base"] + n * VIRTIO_DESC),
                       (nic_truth["avail_addr"], nic_truth["avail_addr"] + 6 + 2 * n),
                       (nic_truth["used_addr"], nic_truth["used_addr"] + 6 + 8 * n)]
    addrs = bufs.get("addrs", []) if bufs.get("readable") else []
    landing = list(addrs)
    posted_after_truth = None
    if nic_kind == "e1000" and bufs.get("readable"):
        written = e1000_written_back(final, bufs["ring_phys"], nic_truth["ring_len"], xlate)
        extra = sorted(set(written) - set(addrs))
        posted_after_truth = len(extra)
        landing += extra
    find_buf = _buffer_index(landing, span if nic_kind == "e1000" else max(bufs.get("lens", [span]) or [span]))

    hw_owned = nic_truth.get("hw_owned")
    ring = {
        "kind": nic_kind,
        "ring_base": hex(nic_truth.get("ring_base", 0)),
        "ring_len": nic_truth.get("ring_len"),
        "hw_owned_at_panic": hw_owned,
        "readable": bufs.get("readable", False),
    }
    if nic_kind == "e1000":
        dd_unprocessed = len(bufs.get("dd_set_indices", []))
        ring.update({
            "rdh_at_panic": nic_truth["rdh"], "rdt_at_panic": nic_truth["rdt"],
            "rctl_at_panic": hex(nic_truth["registers"]["RCTL"]),
            "dd_unprocessed_at_panic": dd_unprocessed,
            # buffers handed to the NIC and not yet reclaimed by the driver
            "free_descriptors_at_panic": (hw_owned or 0) + dd_unprocessed if bufs.get("readable") else hw_owned,
            "rdh_final": nic_final.get("rdh"), "rdt_final": nic_final.get("rdt"),
            "rctl_final": hex(nic_final["registers"]["RCTL"]) if "registers" in nic_final else None,
            "ring_base_final": hex(nic_final.get("ring_base", 0)),
        })
        device_reset = ("registers" in nic_final and
                        (not nic_final["rx_enabled"] or nic_final["ring_base"] != nic_truth["ring_base"]))
    else:
        q_final = nic_final.get("queue", {})
        ring.update({
            "last_avail_idx_at_panic": nic_truth.get("last_avail_idx"),
            "avail_idx_at_panic": nic_truth.get("avail_idx"),
            "free_descriptors_at_panic": hw_owned,
            "final_queue_desc": hex(int(q_final.get("vring-desc", 0))) if q_final else None,
            "final_device_status": nic_final.get("device_status"),
        })
        device_reset = bool(nic_final) and "error" not in nic_final and (
            int(q_final.get("vring-desc", 0)) != nic_truth.get("ring_base"))

    # where post-panic frames landed (final RAM: the NIC's writes outside the
    # reservation are never overwritten by the capture kernel)
    landed: dict[int, int] = {}
    in_res_final, elsewhere_final = set(), set()
    for pa, s in post_final:
        if landing and find_buf(frame_start(pa) if nic_kind == "e1000" else pa) is not None:
            landed[s] = pa
        elif _in_ranges(pa, crash):
            in_res_final.add(s)
        else:
            elsewhere_final.add(s)
    landed_seqs = sorted(landed)
    vm_seqs = {s for _, s in post_vm}
    in_vm_landed = [s for s in landed_seqs if s in vm_seqs]

    # why and when the old DMA stopped
    free = ring.get("free_descriptors_at_panic") or 0
    hw = hw_owned or 0
    ring["buffers_posted_after_truth"] = posted_after_truth
    lost_after = [q for q in post_sent if landed_seqs and q > landed_seqs[-1]]
    traffic_ended = bool(post_sent) and not lost_after and (not landed_seqs or landed_seqs[-1] == post_sent[-1])
    if not addrs:
        reason = "unknown_ring_unreadable"
    elif len(landed_seqs) >= hw and hw > 0:
        reason = "ring_exhausted"
    elif traffic_ended:
        reason = "traffic_ended"
    elif device_reset:
        reason = "driver_reset" if nic_kind == "e1000" else "virtio_pci_reset"
    elif mmu.get("translation_enabled") and not ((record.get("iommu") or {}).get("final") or {}).get(
            "translation_enabled", True):
        reason = "iommu_disabled"
    else:
        reason = "unknown"
    first_lost = next((q for q in post_sent if landed_seqs and q > landed_seqs[-1]), None)
    dma_stop = {
        "reason": reason,
        "landed_old_ring": len(landed_seqs),
        "hw_owned_at_panic": hw,
        "free_descriptors_at_panic": free,
        "first_post_panic_seq": post_sent[0] if post_sent else None,
        "last_landed_seq": landed_seqs[-1] if landed_seqs else None,
        "last_landed_send_s": round(send_time[landed_seqs[-1]], 3) if landed_seqs else None,
        "first_lost_seq": first_lost,
        "first_lost_send_s": round(send_time[first_lost], 3) if first_lost else None,
        "device_reset_seen": bool(device_reset),
    }

    # pages
    crash_pages = _pages_of(crash)
    ring_pages = _pages_of(ring_ranges) if bufs.get("readable") else set()
    dma_ranges = [(a, a + span) for a in addrs]
    buf_pages = _pages_of(dma_ranges)
    post_vm_pages = {pa & ~(PAGE - 1) for pa, _ in post_vm} | {(pa + 256) & ~(PAGE - 1) for pa, _ in post_vm}
    kimage_pages = _pages_of(kimage)
    d_vt, compared = diff_pages(vmcore, truth)
    d_vf, _ = diff_pages(vmcore, final)
    d_vf_set = set(int(p) for p in d_vf)
    classes = Counter()
    cpu_in_kernel_image = 0
    changed_during_dump = 0
    cpu_samples = []
    dma_pages: list[int] = []
    for p in (int(x) for x in d_vt):
        if p in ring_pages:
            c = "ring"
        elif p in post_vm_pages or p in buf_pages:
            c = "payload"
        elif p < 0xA0000:
            c = "low_backup"
        else:
            c = "cpu"
            if p in kimage_pages:
                cpu_in_kernel_image += 1
            if len(cpu_samples) < 12:
                cpu_samples.append(hex(p))
        classes[c] += 1
        if c in ("payload", "ring"):
            dma_pages.append(p)
        if p in d_vf_set and c in ("payload", "ring"):
            changed_during_dump += 1
    # DMA pages the dump missed: changed after dd read them (vmcore == truth, final differs)
    d_vt_set = set(int(p) for p in d_vt)
    dma_after_read = sum(1 for p in d_vf_set if p not in d_vt_set and (p in buf_pages or p in ring_pages)
                         and p not in crash_pages)
    landed_pages = {landed[s] & ~(PAGE - 1) for s in landed_seqs}
    pages = {
        "page_size": PAGE,
        "vmcore_pages_compared": compared,
        "vmcore_vs_truth_changed": int(len(d_vt)),
        "classes": dict(classes),
        "cpu_in_kernel_image": cpu_in_kernel_image,
        "cpu_samples": cpu_samples,
        "vmcore_vs_final_changed": int(len(d_vf)),
        "dma_changed_during_dump": changed_during_dump,
        "dma_pages_after_read": dma_after_read,
        # the payload and ring pages, as page addresses, once each (`classes` counts a page
        # twice when both its copies differ: kexec-tools' kernel-text PT_LOAD repeats the kernel image)
        "dma_pages": [hex(p) for p in sorted(set(dma_pages))],
        "landed_payload_pages": len(landed_pages),
        "frames_per_payload_page": round(len(landed_seqs) / len(landed_pages), 2) if landed_pages else None,
    }

    post = {
        "max_seq_in_truth": max_truth,
        "sent_after_truth": len(post_sent),
        "landed_old_ring": len(landed_seqs),
        "landed_seq_range": [landed_seqs[0], landed_seqs[-1]] if landed_seqs else None,
        "in_vmcore": len(vm_seqs),
        "landed_in_vmcore": len(in_vm_landed),
        "landed_not_in_vmcore": len(landed_seqs) - len(in_vm_landed),
        "in_reservation_final": len(in_res_final),
        # the same sequence also landed in an old RX buffer: a copy made by the
        # capture kernel (dd's buffer, page cache), not DMA into the reservation
        "in_reservation_copies": len(in_res_final & set(landed_seqs)),
        "in_reservation_other": len(in_res_final - set(landed_seqs)),
        "elsewhere_final": len(elsewhere_final),
        "first_kernel_frames_truth": len(f_truth),
    }
    reservation = {
        "range": [hex(lo) for lo, _ in crash] + [hex(hi) for _, hi in crash],
        "rx_buffers_inside": sum(1 for a in addrs if _in_ranges(a, crash)),
        "ring_inside": any(_in_ranges(lo, crash) for lo, _ in ring_ranges) if bufs.get("readable") else None,
        "post_panic_frames_inside_final": len(in_res_final),
        "post_panic_frames_inside_not_copies": len(in_res_final - set(landed_seqs)),
    }
    rx = packing(addrs)
    rx["span_bytes"] = span
    rx["in_kernel_image"] = sum(1 for a in addrs if _in_ranges(a, kimage))
    rx["sample_addrs"] = [hex(a) for a in addrs[:8]]
    # every buffer the NIC could fill after the panic, in the order it fills them
    # (RDH..RDT-1, then any the driver posted after the truth snapshot; virtio:
    # the avail ring from last_avail_idx), physical; and the ring (kdumpsim.lab predict)
    rx["addrs"] = [hex(a) for a in landing]
    rx["ring_phys"] = hex(ring_ranges[0][0]) if bufs.get("readable") and nic_kind == "e1000" and not xlate else None
    if not bufs.get("readable"):
        rx["note"] = bufs.get("note")

    iommu_res = None
    if mmu:
        fin = (record.get("iommu") or {}).get("final") or {}
        last = landed_seqs[-1] if landed_seqs else max_truth
        redirected = sorted({(pa, s) for pa, s in post_final if s > last and s not in landed
                             and s not in set(landed_seqs)})
        redirected_seqs = {s for _, s in redirected}
        vm_redirect = {s for _, s in post_vm if s > last}
        iommu_res = {
            "translation_at_panic": mmu.get("translation_enabled"),
            "translation_final": fin.get("translation_enabled"),
            "ring_iova": hex(nic_truth.get("ring_base", 0)),
            "ring_phys": hex(bufs["ring_phys"]) if bufs.get("ring_phys") is not None else None,
            "buffer_iova_range": ([hex(min(bufs["iovas"])), hex(max(bufs["iovas"]))]
                                  if bufs.get("iovas") else None),
            "untranslated_buffers": bufs.get("untranslated"),
            # post-panic frames newer than the last one in an old buffer, found in RAM:
            # DMA after the capture kernel switched translation off
            "redirected_frames_final": len(redirected_seqs),
            "redirected_in_reservation": sum(1 for pa, _ in redirected if _in_ranges(pa, crash)),
            "redirected_in_vmcore": len(vm_redirect),
            "redirected_sample_paddrs": [hex(pa) for pa, _ in redirected[:10]],
        }
        if nic_kind == "e1000" and fin and not fin.get("translation_enabled") and nic_final.get("ring_len"):
            iommu_res["after_translation_off"] = descriptors_after_off(
                final, nic_truth, nic_final, len(landed_seqs), system_ram, crash)

    return {
        "schema": SCHEMA,
        "iommu": iommu_res,
        "scenario": scen,
        "kernel": record.get("kernel"),
        "qemu": record.get("qemu"),
        "kexec_tools": record.get("kexec_tools"),
        "machine": {
            "ram_mib": scen["ram_mib"], "crashkernel": reservation["range"],
            "system_ram": [[hex(r["start"]), hex(r["end"] + 1)] for r in iomem if r["name"] == "System RAM"],
            "kernel_image": [[hex(lo), hex(hi)] for lo, hi in kimage],
            "kernel_init_size": record.get("kernel_init_size"),
        },
        "traffic": {
            "rate_pps": scen["rate_pps"], "frame_len": frame_len, "sent": int(len(sent)),
            "sent_before_truth": record.get("sent_before_truth"),
            "sender_stop": record.get("sender_stop_reason"),
        },
        "phases_s": phase_times(record),
        "cycle_s": round(record["times"]["end"] - record["times"]["start"], 1) if "end" in record["times"] else None,
        "truth_dump_s": round(record["times"].get("truth_dump_s", 0), 2),
        "ring": ring,
        "rx_buffers": rx,
        "post_panic": post,
        "dma_stop": dma_stop,
        "pages": pages,
        "reservation": reservation,
    }


def measure(rundir: str | Path) -> dict:
    rundir = Path(rundir)
    need = ["run.json", "traffic.npy", "truth.elf", "disk.img", "final.elf"]
    missing = [n for n in need if not (rundir / n).exists()]
    if missing:
        raise LabError(f"{rundir}: missing {', '.join(missing)} (run the cycle again without --discard-dumps)")
    record = json.loads((rundir / "run.json").read_text())
    sent = np.load(rundir / "traffic.npy")
    cores = [Core(rundir / n) for n in ("truth.elf", "disk.img", "final.elf")]
    try:
        result = analyse(record, sent, *cores)
    finally:
        for c in cores:
            try:
                c.close()
            except BufferError:
                pass
    (rundir / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    (rundir / "summary.txt").write_text(summary(result) + "\n")
    return result


def summary(r: dict) -> str:
    ph, ring, post, stop, pg, rx, res = (r["phases_s"], r["ring"], r["post_panic"], r["dma_stop"],
                                         r["pages"], r["rx_buffers"], r["reservation"])
    k = r.get("kernel") or {}

    def t(key):
        v = ph.get(key)
        return f"{v:.2f}s" if isinstance(v, (int, float)) else "-"
    lines = [
        f"scenario {r['scenario']['name']}: {r['scenario'].get('description', '')}",
        f"  kernel {k.get('package')} {k.get('version')}; {r.get('qemu')}; cycle {r.get('cycle_s')} s",
        f"  ring {ring['kind']} N={ring['ring_len']} at {ring['ring_base']}: hw-owned at panic {ring['hw_owned_at_panic']},"
        f" free descriptors {ring.get('free_descriptors_at_panic')}",
        f"  RX buffers: {rx.get('buffers', 0)} in {rx.get('pages', 0)} pages, per page {rx.get('buffers_per_page')},"
        f" strides {rx.get('top_strides')}, page runs {rx.get('page_runs')}",
        f"  traffic {r['traffic']['rate_pps']}/s, sent {r['traffic']['sent']}; newest seq in truth {post['max_seq_in_truth']}",
        f"  post-panic frames: landed in old ring {post['landed_old_ring']}, in vmcore {post['in_vmcore']}"
        f" (landed but not in vmcore {post['landed_not_in_vmcore']}), in reservation (final) {post['in_reservation_final']}"
        f" ({post['in_reservation_copies']} copies of landed frames),"
        f" elsewhere {post['elsewhere_final']}",
        f"  DMA stop: {stop['reason']}; last landed seq {stop['last_landed_seq']} sent at {stop['last_landed_send_s']} s,"
        f" first lost {stop['first_lost_seq']} at {stop['first_lost_send_s']} s (after cont)",
        f"  vmcore pages vs truth: {pg['vmcore_vs_truth_changed']} changed of {pg['vmcore_pages_compared']}: {pg['classes']}"
        f" (cpu in kernel image {pg['cpu_in_kernel_image']}); DMA changed during dump {pg['dma_changed_during_dump']},"
        f" DMA after read {pg['dma_pages_after_read']}; payload pages {pg['landed_payload_pages']}"
        f" ({pg['frames_per_payload_page']} frames/page)",
        f"  reservation {res['range']}: RX buffers inside {res['rx_buffers_inside']}, ring inside {res['ring_inside']}",
        f"  phases after cont: panic {t('panic')}, capture kernel {t('capture_kernel_start')}, /init {t('capture_init')},"
        f" NIC driver {t('nic_driver_load')}, disk driver {t('disk_driver_load')}, dump {t('dump_start')}..{t('dump_end')}"
        f" ({ph.get('dump_rate_mb_s')} MB/s, {ph.get('vmcore_bytes')} bytes)",
    ]
    return "\n".join(lines)


TABLE_COLUMNS = [
    ("scenario", lambda r: r["scenario"]["name"]),
    ("pps", lambda r: f"{r['scenario']['rate_pps']:g}"),
    ("free desc. at panic (N)", lambda r: f"{r['ring']['free_descriptors_at_panic']} ({r['ring']['ring_len']})"),
    ("RX bufs / pages", lambda r: f"{r['rx_buffers'].get('buffers', 0)} / {r['rx_buffers'].get('pages', 0)}"),
    ("post-panic landed (old ring)", lambda r: r["post_panic"]["landed_old_ring"]),
    ("in vmcore", lambda r: r["post_panic"]["in_vmcore"]),
    ("DMA stop", lambda r: r["dma_stop"]["reason"]),
    ("last landed sent at (s)", lambda r: r["dma_stop"]["last_landed_send_s"]),
    ("vmcore pages changed: payload/ring/cpu", lambda r: "/".join(
        str(r["pages"]["classes"].get(k, 0)) for k in ("payload", "ring", "cpu"))),
    ("RX bufs in reservation", lambda r: r["reservation"]["rx_buffers_inside"]),
    ("capture kernel / init / NIC drv / disk drv (s)", lambda r: " / ".join(
        f"{r['phases_s'][k]:.2f}" if k in r["phases_s"] else "-"
        for k in ("capture_kernel_start", "capture_init", "nic_driver_load", "disk_driver_load"))),
    ("dump start..end (s), MB/s", lambda r: f"{r['phases_s'].get('dump_start', 0):.2f}..{r['phases_s'].get('dump_end', 0):.2f},"
     f" {r['phases_s'].get('dump_rate_mb_s')}"),
    ("cycle (s)", lambda r: r.get("cycle_s")),
]


def table(results: list[dict]) -> str:
    """A markdown table of measured results, one row per run."""
    head = "| " + " | ".join(name for name, _ in TABLE_COLUMNS) + " |"
    sep = "|" + "---|" * len(TABLE_COLUMNS)
    rows = ["| " + " | ".join(str(fn(r)) for _, fn in TABLE_COLUMNS) + " |" for r in results]
    return "\n".join([head, sep, *rows])
