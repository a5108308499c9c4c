"""`python -m kdumpsim.lab run SCENARIO`: one real kdump cycle under QEMU TCG.

Sequence (the method of the project's shared REAL-KDUMP-LAB.md):
 1. boot the first kernel; its /init loads the NIC driver, brings eth0 up,
    `kexec -p` loads the capture kernel, prints "LAB: READY";
 2. the host starts the bounded loopback sender (traffic.py), waits the
    warm-up, and writes "go" to the serial console;
 3. the guest's helper writes PANICKED to pvpanic: QEMU pauses the VM
    (`-action panic=pause`, event GUEST_PANICKED); the host pauses the sender,
    reads the NIC ring state (nicstate.py) and takes the truth RAM image with
    `dump-guest-memory`, resumes the sender and sends `cont`;
 4. the helper writes 'c' to /proc/sysrq-trigger: panic -> __crash_kexec
    (kernel/panic.c) -> capture kernel, whose /init dd's /proc/vmcore to the
    raw disk and prints "LAB: DUMP END";
 5. the host stops the VM, reads the NIC state again, takes the final RAM
    image, stops the sender and quits QEMU.
The run directory gets run.json (everything the host saw, host times are
time.monotonic() seconds), serial.log, traffic.npy (seq, send ns), truth.elf,
final.elf and disk.img (the vmcore, dd'd raw to the disk).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import numpy as np

from . import LabError, iommu, nicstate, qemu, setup, traffic
from .scenario import Scenario

IOMEM_RE = re.compile(r"LAB: IOMEM\s+([0-9a-f]+)-([0-9a-f]+) : (.+)$")


def _iomem(serial: qemu.Serial) -> list[dict]:
    out = []
    for _, line in serial.lines:
        m = IOMEM_RE.search(line)
        if m:
            out.append({"start": int(m.group(1), 16), "end": int(m.group(2), 16), "name": m.group(3).strip()})
    return out


def _iommu_state(qmp, serial, nic: str) -> dict:
    try:
        bdf = nicstate.e1000_bdf(qmp) if nic == "e1000" else None
        return iommu.read_state(qmp, iommu.drhd_base(serial.lines), bdf)
    except LabError as exc:
        return {"error": str(exc)}


def run(scen: Scenario, rundir: Path, meta: dict | None = None, log=print) -> dict:
    meta = meta or setup.setup(verbose=False)
    rundir = Path(rundir).resolve()      # QEMU runs in rundir: a relative path it is given would not be found
    rundir.mkdir(parents=True, exist_ok=True)
    for name in ("truth.elf", "final.elf", "disk.img", "qmp.sock"):
        (rundir / name).unlink(missing_ok=True)
    disk = rundir / "disk.img"
    with open(disk, "wb") as fh:
        fh.truncate((scen.ram_mib + 64) << 20)
    qmp_path = rundir / "qmp.sock"
    guest_port = traffic.free_udp_port()
    host_port = traffic.free_udp_port()
    while host_port == guest_port:
        host_port = traffic.free_udp_port()
    run_id = int.from_bytes(os.urandom(4), "little")
    argv = qemu.command_line(meta, scen, rundir, qmp_path, guest_port, host_port, disk)
    sender = traffic.Sender(guest_port, host_port, qemu.GUEST_MAC, scen.rate_pps, scen.max_packets,
                            scen.max_seconds, scen.frame_len, run_id)
    record: dict = {
        "scenario": scen.to_dict(), "kernel": meta["kernel"], "kernel_init_size": meta["kernel_init_size"],
        "qemu": meta["qemu"], "kexec_tools": meta["kexec_tools"], "images_key": meta["key"],
        "argv": argv, "run_id": run_id, "guest_mac": qemu.GUEST_MAC, "frame_len": scen.frame_len,
        "times": {}, "nic": {},
    }
    times = record["times"]
    t_start = time.monotonic()
    times["start"] = t_start
    proc, serial = qemu.start(argv, rundir)
    qmp = None
    try:
        qmp = qemu.QMP(qmp_path)
        deadline = t_start + scen.timeout_seconds
        left = lambda: max(1.0, deadline - time.monotonic())  # noqa: E731
        i = serial.wait_for("LAB: READY", left(), fail_on=("LAB: ERROR", "Kernel panic"))
        times["ready"] = serial.lines[i][0]
        log(f"  guest ready after {times['ready'] - t_start:.1f} s; traffic {scen.rate_pps:g}/s")
        sender.start()
        times["traffic_start"] = time.monotonic()
        time.sleep(scen.warmup_seconds)
        times["go"] = time.monotonic()
        serial.send("go\n")
        ev = qmp.wait_event("GUEST_PANICKED", left())
        sender.pause()
        times["paused"] = ev["_host_time"]
        record["panic_event"] = {k: v for k, v in ev.items() if k != "_host_time"}
        record["sent_before_truth"] = sender.count()
        record["nic"]["truth"] = nicstate.read(qmp, scen.nic)
        if scen.iommu:
            record["iommu"] = {"truth": _iommu_state(qmp, serial, scen.nic)}
        times["truth_dump_s"] = qmp.dump(rundir / "truth.elf")
        sender.resume()
        qmp.execute("cont")
        times["cont"] = time.monotonic()
        log(f"  truth taken ({times['truth_dump_s']:.1f} s), panicking")
        i = serial.wait_for("LAB: DUMP END", left(), start=i)
        times["dump_end_seen"] = serial.lines[i][0]
        qmp.execute("stop")
        times["stopped"] = time.monotonic()
        record["nic"]["final"] = nicstate.read(qmp, scen.nic)
        if scen.iommu:
            record["iommu"]["final"] = _iommu_state(qmp, serial, scen.nic)
        sender.stop()
        record["sender_stop_reason"] = sender.stop_reason or "cycle_end"
        times["final_dump_s"] = qmp.dump(rundir / "final.elf")
        try:
            qmp.execute("quit", timeout=10)
        except LabError:
            pass
        proc.wait(timeout=30)
        times["end"] = time.monotonic()
    except Exception:
        if proc.poll() is None:
            proc.kill()
        raise
    finally:
        sender.stop()
        if qmp:
            qmp.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        serial.close()
        record["serial"] = [[t, s] for t, s in serial.lines]
        record["iomem"] = _iomem(serial)
        record["sent"] = sender.count()
        record["sender_pauses"] = sender.pauses
        np.save(rundir / "traffic.npy", np.array(sender.sent, dtype=np.int64).reshape(-1, 2))
        (rundir / "run.json").write_text(json.dumps(record, indent=1) + "\n")
        (rundir / "qmp.sock").unlink(missing_ok=True)
    log(f"  cycle done in {times['end'] - t_start:.1f} s; {record['sent']} frames sent")
    return record


def disk_usage(rundir: Path) -> int:
    return sum(os.stat(p).st_blocks * 512 for p in Path(rundir).iterdir() if p.is_file())


def discard_dumps(rundir: Path) -> None:
    for name in ("truth.elf", "final.elf", "disk.img"):
        (Path(rundir) / name).unlink(missing_ok=True)

