"""Fast tests (no QEMU) of the lab's measurement code on small synthetic inputs:
ELF core reading, frame scanning, ring decoding, page classes, the DMA stop
reason, initramfs writing, module ordering and scenario checks."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from kdumpsim.lab import LabError, initramfs, measure, scenario, traffic
from kdumpsim.lab.elfcore import PAGE, Core

MAC = traffic.mac_bytes("52:54:00:12:34:56")
RUN_ID = 7
RAM = 0x400000                      # 4 MiB of synthetic guest RAM
CRASH = (0x300000, 0x400000)        # "Crash kernel" range: left out of the vmcore
RING = 0x110000                     # e1000 descriptor ring (one page)
N = 8
BUF0 = 0x120000
STRIDE = 0x780
CPU_PAGE = 0x150000                 # above 640 KiB: not the kexec_load backup area
LOW_PAGE = 0x5000                   # below 640 KiB
FRAME_LEN = 128


def write_core(path: Path, loads: list[tuple[int, int, bytes]]) -> None:
    """An ELF64 ET_CORE file with one PT_LOAD per (paddr, vaddr, data)."""
    phoff, phnum = 64, len(loads)
    off = (phoff + 56 * phnum + PAGE - 1) & ~(PAGE - 1)
    ehdr = b"\x7fELF" + bytes([2, 1, 1]) + b"\0" * 9
    ehdr += struct.pack("<HHIQQQIHHHHHH", 4, 62, 1, 0, phoff, 0, 0, 64, 56, phnum, 0, 0, 0)
    phdrs, body, pos = b"", b"", off
    for paddr, vaddr, data in loads:
        phdrs += struct.pack("<IIQQQQQQ", 1, 7, pos, vaddr, paddr, len(data), len(data), 0)
        body += data
        pos += len(data)
    blob = ehdr + phdrs
    path.write_bytes(blob + b"\0" * (off - len(blob)) + body)


def put_frame(ram: bytearray, paddr: int, seq: int, send_ns: int = 0) -> None:
    frame = traffic.make_frame(MAC, seq, send_ns, RUN_ID, FRAME_LEN)
    ram[paddr:paddr + len(frame)] = frame


def put_desc(ram: bytearray, i: int, addr: int, status: int = 0) -> None:
    struct.pack_into("<QHHBBH", ram, RING + 16 * i, addr, 0, 0, status, 0, 0)


def buf(i: int) -> int:
    return BUF0 + i * STRIDE


def make_run(tmp_path: Path, landed: list[int], after_read: list[int], final_rctl: int = 0x8002,
             sent_upto: int = 14, with_copy: bool = True) -> tuple[dict, np.ndarray, Core, Core, Core]:
    """Truth: seqs 1..5 seen, descriptors 2..7 hardware-owned (RDH=2, RDT=0),
    descriptor 1 written back (DD) but not cleaned.  Post-panic seqs in `landed`
    go to buffers 2.. in order; those in `after_read` reach final RAM only."""
    truth = bytearray(RAM)
    for i in range(N):
        put_desc(truth, i, buf(i), status=1 if i == 1 else 0)
    for seq in range(1, 6):
        put_frame(truth, 0x180000 + seq * 0x200, seq)     # skb copies of old frames
    vm = bytearray(truth)
    final = bytearray(truth)
    for k, seq in enumerate(landed):
        i = 2 + k
        put_frame(final, buf(i), seq)
        struct.pack_into("<B", final, RING + 16 * i + 12, 1)
        if seq not in after_read:
            put_frame(vm, buf(i), seq)
            struct.pack_into("<B", vm, RING + 16 * i + 12, 1)
    vm[CPU_PAGE + 100] ^= 0xFF                 # a page the panicking CPU wrote
    final[CPU_PAGE + 100] ^= 0xFF
    vm[LOW_PAGE] ^= 0x1
    if with_copy and landed:
        put_frame(final, CRASH[0] + 0x3000, landed[0])   # dd's page-cache copy
    paths = {n: tmp_path / n for n in ("truth.elf", "disk.img", "final.elf")}
    write_core(paths["truth.elf"], [(0, 0, bytes(truth))])
    # the vmcore: a kernel-text alias first, then RAM without the reservation
    write_core(paths["disk.img"], [(0x1000, 0xffffffff81000000, bytes(vm[0x1000:0x3000])),
                                   (0, 0xffff888000000000, bytes(vm[:CRASH[0]]))])
    write_core(paths["final.elf"], [(0, 0, bytes(final))])
    regs = {"RCTL": 0x8002, "RDBAL": RING, "RDBAH": 0, "RDLEN": N * 16, "RDH": 2, "RDT": 0}
    nic_truth = {"kind": "e1000", "registers": regs, "ring_base": RING, "ring_len": N, "rdh": 2, "rdt": 0,
                 "rx_enabled": True, "hw_owned": 6}
    rdh_final = (2 + len(landed)) % N
    fregs = dict(regs, RCTL=final_rctl, RDH=rdh_final)
    nic_final = dict(nic_truth, registers=fregs, rdh=rdh_final, rx_enabled=bool(final_rctl & 2),
                     hw_owned=(0 - rdh_final) % N)
    t_cont = 100.0
    sent = np.array([[q, int((t_cont - 1 + q * 0.1) * 1e9)] for q in range(1, sent_upto + 1)], dtype=np.int64)
    serial = [[t_cont - 0.5, "LAB: READY uptime=4.0"],
              [t_cont + 0.01, "[    7.6] sysrq: Trigger a crash"],
              [t_cont + 3.0, "[    0.000000] Linux version 6.1.0-56-amd64"],
              [t_cont - 60, "[    0.000000] Linux version 6.1.0-56-amd64"],
              [t_cont + 5.0, "LAB: CAPTURE INIT uptime=2.0"],
              [t_cont + 5.1, "LAB: VMCORE SIZE 1000000 uptime=2.1"],
              [t_cont + 5.2, "LAB: LOADING virtio-blk uptime=2.2"],
              [t_cont + 5.5, "LAB: DUMP START /dev/vda uptime=2.5"],
              [t_cont + 6.5, "LAB: DUMP END rc=0 uptime=3.5"]]
    serial.sort()
    record = {
        "scenario": scenario.Scenario(name="synthetic", frame_len=FRAME_LEN).to_dict(),
        "kernel": {"package": "linux-image-6.1.0-56-amd64-unsigned"},
        "run_id": RUN_ID, "frame_len": FRAME_LEN,
        "times": {"start": t_cont - 20, "ready": t_cont - 0.5, "cont": t_cont, "end": t_cont + 10},
        "nic": {"truth": nic_truth, "final": nic_final},
        "iomem": [{"start": 0x1000, "end": 0x9fbff, "name": "System RAM"},
                  {"start": 0x100000, "end": RAM - 1, "name": "System RAM"},
                  {"start": CRASH[0], "end": CRASH[1] - 1, "name": "Crash kernel"},
                  {"start": 0x150000, "end": 0x15ffff, "name": "Kernel code"}],
        "serial": serial,
        "sent_before_truth": 5,
    }
    return record, sent, Core(paths["truth.elf"]), Core(paths["disk.img"]), Core(paths["final.elf"])


def test_core_maps_paddr_and_skips_text_alias(tmp_path):
    _, _, truth, vm, _ = make_run(tmp_path, [6, 7], [])
    assert [ld.paddr for ld in vm.ram_loads()] == [0]
    assert vm.read(RING, 16)[:8] == struct.pack("<Q", buf(0))
    assert vm.paddr_to_offset(CRASH[0]) is None
    assert truth.offset_to_paddr(truth.paddr_to_offset(0x1234)) == 0x1234


def test_scan_frames_finds_seq_and_paddr(tmp_path):
    _, _, truth, _, final = make_run(tmp_path, [6, 7], [])
    seqs = sorted(s for _, s, _ in measure.scan_frames(truth, RUN_ID))
    assert seqs == [1, 2, 3, 4, 5]
    hits = {s: pa for pa, s, _ in measure.scan_frames(final, RUN_ID)}
    assert measure.frame_start(hits[7]) == buf(3)
    assert measure.scan_frames(final, RUN_ID + 1) == []


def test_ring_exhausted(tmp_path):
    r = measure.analyse(*make_run(tmp_path, landed=[6, 7, 8, 9, 10, 11], after_read=[10, 11]))
    assert r["post_panic"]["max_seq_in_truth"] == 5
    assert r["ring"]["hw_owned_at_panic"] == 6
    assert r["ring"]["dd_unprocessed_at_panic"] == 1
    assert r["ring"]["free_descriptors_at_panic"] == 7
    assert r["dma_stop"]["reason"] == "ring_exhausted"
    assert r["dma_stop"]["last_landed_seq"] == 11
    assert r["dma_stop"]["first_lost_seq"] == 12
    assert r["dma_stop"]["last_landed_send_s"] == pytest.approx(0.1, abs=1e-6)
    assert r["post_panic"]["landed_old_ring"] == 6
    assert r["post_panic"]["landed_not_in_vmcore"] == 2
    assert r["post_panic"]["in_reservation_copies"] == 1
    assert r["reservation"]["post_panic_frames_inside_not_copies"] == 0
    assert r["reservation"]["rx_buffers_inside"] == 0
    classes = r["pages"]["classes"]
    assert classes["ring"] == 1 and classes["cpu"] == 1 and classes["payload"] >= 2
    assert classes["low_backup"] == 1
    assert r["pages"]["cpu_in_kernel_image"] == 1
    assert r["pages"]["dma_pages_after_read"] >= 1
    assert r["rx_buffers"]["buffers"] == 6
    assert r["rx_buffers"]["top_strides"] == {hex(STRIDE): 5}


def test_driver_reset(tmp_path):
    r = measure.analyse(*make_run(tmp_path, landed=[6, 7, 8], after_read=[], final_rctl=0))
    assert r["dma_stop"]["reason"] == "driver_reset"
    assert r["dma_stop"]["device_reset_seen"] is True
    assert r["post_panic"]["landed_old_ring"] == 3


def test_traffic_ended(tmp_path):
    r = measure.analyse(*make_run(tmp_path, landed=[6, 7, 8], after_read=[], sent_upto=8))
    assert r["dma_stop"]["reason"] == "traffic_ended"
    assert r["dma_stop"]["first_lost_seq"] is None


def test_phase_times(tmp_path):
    record = make_run(tmp_path, [6], [])[0]
    ph = measure.phase_times(record)
    assert ph["panic"] == pytest.approx(0.01)
    assert ph["capture_kernel_start"] == pytest.approx(3.0)
    assert ph["capture_init"] == pytest.approx(5.0)
    assert ph["disk_driver_load"] == pytest.approx(5.2)
    assert ph["dump_rate_mb_s"] == pytest.approx(1.0)
    assert ph["guest_uptime"]["dump_end"] == 3.5


def test_packing():
    addrs = [0x1000, 0x1780, 0x2000 - 0x80, 0x3000]
    p = measure.packing(addrs)
    assert p["buffers"] == 4 and p["pages"] == 2
    assert p["buffers_per_page"] == {"1": 1, "3": 1}
    assert p["page_runs"] == {"count": 2, "max": 1, "mean": 1.0}


def test_virtio_buffers(tmp_path):
    ram = bytearray(0x10000)
    desc, avail = 0x1000, 0x2000
    for i in range(4):
        struct.pack_into("<QIHH", ram, desc + 16 * i, 0x8000 + i * 0x600, 1536, 2, 0)
    struct.pack_into("<HH4H", ram, avail, 0, 6, 2, 3, 0, 1)
    write_core(tmp_path / "t.elf", [(0, 0, bytes(ram))])
    core = Core(tmp_path / "t.elf")
    nic = {"ring_len": 4, "ring_base": desc, "avail_addr": avail, "last_avail_idx": 3, "avail_idx": 6}
    b = measure.virtio_buffers(core, nic)
    assert b["indices"] == [1, 2, 3]
    assert b["addrs"] == [0x8600, 0x8C00, 0x9200]


def test_frame_format_roundtrip():
    f = traffic.make_frame(MAC, 42, 123, 9, 200)
    assert len(f) == 200 and f[12:14] == b"\x88\xb5"
    assert traffic.parse_at(f, traffic.ETH_HDR) == (42, 123, 9)
    assert traffic.parse_at(f, 0) is None


def _read_newc(data: bytes) -> dict[str, tuple[int, bytes]]:
    out, pos = {}, 0
    while True:
        assert data[pos:pos + 6] == b"070701"
        f = [int(data[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = f[1], f[6], f[11]
        name = data[pos + 110: pos + 110 + namesize - 1].decode()
        pos = (pos + 110 + namesize + 3) & ~3
        body = data[pos:pos + size]
        pos = (pos + size + 3) & ~3
        if name == "TRAILER!!!":
            return out
        out[name] = (mode, body)


def test_cpio_newc_roundtrip():
    w = initramfs.CpioWriter()
    w.file("bin/busybox", b"\x7fELF", 0o755)
    w.symlink("bin/sh", "busybox")
    w.chardev("dev/console", 5, 1)
    entries = _read_newc(gzip.decompress(w.gzip()))
    assert entries["bin/busybox"] == (0o100755, b"\x7fELF")
    assert entries["bin/sh"] == (0o120777, b"busybox")
    assert entries["bin"][0] == 0o040755
    assert entries["dev/console"][0] == 0o020600
    assert w.gzip() == w.gzip()          # reproducible


def _fake_ko(path: Path, depends: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x7fELF\0license=GPL\0depends=" + depends.encode() + b"\0name=x\0")


def test_module_order(tmp_path):
    _fake_ko(tmp_path / "a" / "virtio_net.ko", "virtio_ring,virtio,net_failover")
    _fake_ko(tmp_path / "a" / "virtio.ko", "virtio_ring")
    _fake_ko(tmp_path / "b" / "virtio_ring.ko", "")
    _fake_ko(tmp_path / "b" / "net_failover.ko", "failover")
    _fake_ko(tmp_path / "b" / "failover.ko", "")
    _fake_ko(tmp_path / "b" / "t10-pi.ko", "")
    index = initramfs.index_modules(tmp_path)
    order = initramfs.resolve_order(["virtio_net"], index)
    assert order.index("virtio_ring") < order.index("virtio") < order.index("virtio_net")
    assert order.index("failover") < order.index("net_failover")
    assert initramfs.resolve_order(["t10-pi"], index) == ["t10_pi"]
    with pytest.raises(LabError):
        initramfs.resolve_order(["missing_mod"], index)


def test_scenario_files_load_and_bad_values_fail(tmp_path):
    root = Path(__file__).resolve().parents[2] / "lab" / "scenarios"
    names = {scenario.load(p).name for p in root.glob("*.yaml")}
    assert {"e1000-nodriver-200pps", "e1000-driver-10pps", "virtio-net-virtio-disk", "e1000-iommu-off"} <= names
    bad = tmp_path / "bad.yaml"
    bad.write_text("nic: rtl8139\n")
    with pytest.raises(LabError, match="nic"):
        scenario.load(bad)
    bad.write_text("colour: blue\n")
    with pytest.raises(LabError, match="unknown keys"):
        scenario.load(bad)


def test_vtd_translator_walks_legacy_tables():
    from kdumpsim.lab.iommu import Translator
    mem = bytearray(0x20000)
    root, ctx, l3, l2, l1 = 0x1000, 0x2000, 0x3000, 0x4000, 0x5000
    bus, devfn = 0, (2 << 3) | 0
    struct.pack_into("<QQ", mem, root + 16 * bus, ctx | 1, 0)
    struct.pack_into("<QQ", mem, ctx + 16 * devfn, l3 | 1, 1 | (5 << 8))      # AW=1: 3 levels
    iova = 0xFFFFE000
    struct.pack_into("<Q", mem, l3 + 8 * ((iova >> 30) & 0x1FF), l2 | 3)
    struct.pack_into("<Q", mem, l2 + 8 * ((iova >> 21) & 0x1FF), l1 | 3)
    struct.pack_into("<Q", mem, l1 + 8 * ((iova >> 12) & 0x1FF), 0x1FE24000 | 3)
    big = 0xFFC00000                                                         # a 2 MiB page
    struct.pack_into("<Q", mem, l2 + 8 * ((big >> 21) & 0x1FF), 0x0A000000 | 3 | (1 << 7))

    def read(pa, n):
        return bytes(mem[pa:pa + n]) if pa + n <= len(mem) else None

    tr = Translator(read, root, bus, devfn)
    assert tr.ok and tr.levels == 3 and tr.domain == 5
    assert tr.translate(iova + 0x123) == 0x1FE24123
    assert tr.translate(big + 0x1234) == 0x0A001234
    assert tr.translate(0x1000) is None                                       # unmapped
    assert not Translator(read, root, 1, devfn).ok                            # no root entry for bus 1


def test_missing_tool_is_one_line_error_exit_2(monkeypatch, capsys):
    from kdumpsim.lab import commands as cli
    from kdumpsim.lab import setup
    monkeypatch.setitem(setup.TOOLS, "no-such-tool-kdumpsim", "no-such-package")
    with pytest.raises(LabError, match="missing tool no-such-tool-kdumpsim .*no-such-package"):
        setup.check_tools()
    assert cli.main(["setup"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lab: error: missing tool no-such-tool-kdumpsim") and "\n" not in err
