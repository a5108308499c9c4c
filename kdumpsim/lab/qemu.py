"""QEMU for the lab: command line, a QMP client (stdlib only), the serial console.

Sources (QEMU 7.2 documentation and QAPI schema):
- QMP wire protocol: docs/interop/qmp-spec.rst (greeting, `qmp_capabilities`,
  one JSON object per line, replies `return`/`error`, asynchronous `event`).
- Commands used: `query-status`, `query-pci` (BAR addresses assigned by the
  firmware), `human-monitor-command` with HMP `xp` (physical memory read,
  which dispatches to device MMIO), `dump-guest-memory` (qapi/dump.json:
  ELF with one PT_LOAD per guest RAM block, paging=false), `cont`, `stop`,
  `quit`, `x-query-virtio`, `x-query-virtio-queue-status`
  (qapi/virtio.json, QEMU 7.2+).
- Events: GUEST_PANICKED (qapi/run-state.json) is sent when the guest writes
  PANICKED to pvpanic; with `-action panic=pause` the VM stops in state
  `guest-panicked` and `cont` resumes it (softmmu/runstate.c).
- `-netdev dgram` (QEMU 7.2, docs/system/invocation: one UDP datagram is one
  Ethernet frame) and `-accel tcg` (no KVM on this host).
"""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import threading
import time
from pathlib import Path

from . import LabError

GUEST_MAC = "52:54:00:12:34:56"


def command_line(meta: dict, scen, rundir: Path, qmp_path: Path, guest_port: int, host_port: int,
                 disk: Path) -> list[str]:
    """The qemu-system-x86_64 argv for one cycle."""
    cmdline = [
        "console=ttyS0", scen.crashkernel_arg(),
        f"lab_nic={scen.nic}", f"lab_capnic={1 if scen.capture_loads_nic else 0}",
        f"lab_disk={scen.disk}",
    ]
    machine = ["-M", "pc"]
    iommu = []
    capextra = list(scen.capture_append)
    if scen.iommu:
        machine = ["-M", "q35"]
        iommu = ["-device", "intel-iommu,intremap=off"]
        cmdline.append("intel_iommu=on")
        capextra = ["intel_iommu=off", *(w for w in capextra if w != "intel_iommu=off")]
    if capextra:      # first-init.sh turns the commas back into spaces on kexec -p --append
        cmdline.append("lab_capextra=" + ",".join(capextra))
    netdev = (f"dgram,id=n0,local.type=inet,local.host=127.0.0.1,local.port={guest_port},"
              f"remote.type=inet,remote.host=127.0.0.1,remote.port={host_port}")
    nicdev = "e1000" if scen.nic == "e1000" else "virtio-net-pci"
    drive_if = "virtio" if scen.disk == "virtio" else "ide"
    return [
        meta.get("qemu_binary", "qemu-system-x86_64"),
        "-accel", "tcg", *machine, "-cpu", "max,la57=off",
        "-m", str(scen.ram_mib), "-smp", "1",
        "-display", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot",
        "-kernel", meta["vmlinuz"], "-initrd", meta["initrd_first"],
        "-append", " ".join(cmdline),
        *iommu,
        "-device", "pvpanic", "-action", "panic=pause",
        "-netdev", netdev, "-device", f"{nicdev},netdev=n0,mac={GUEST_MAC}",
        "-drive", f"file={disk},if={drive_if},format=raw",
        "-qmp", f"unix:{qmp_path},server=on,wait=off",
    ]


class Serial:
    """Reads QEMU's stdout (the guest's ttyS0) line by line, timestamping each
    line with the host's time.monotonic()."""

    def __init__(self, proc: subprocess.Popen, log_path: Path):
        self.proc = proc
        self.lines: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        self._log = open(log_path, "w", encoding="utf-8", errors="replace")
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for raw in iter(self.proc.stdout.readline, b""):
            t = time.monotonic()
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            with self._cond:
                self.lines.append((t, line))
                self._log.write(f"{t:.6f} {line}\n")
                self._log.flush()
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def send(self, text: str) -> None:
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def wait_for(self, needle: str, timeout: float, start: int = 0, fail_on: tuple[str, ...] = ()) -> int:
        """Index of the first line at or after `start` containing `needle`."""
        deadline = time.monotonic() + timeout
        i = start
        with self._cond:
            while True:
                while i < len(self.lines):
                    text = self.lines[i][1]
                    if needle in text:
                        return i
                    for bad in fail_on:
                        if bad in text:
                            raise LabError(f"guest reported {text.strip()!r} while waiting for {needle!r}")
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and i >= len(self.lines)):
                    tail = " | ".join(t for _, t in self.lines[-3:])
                    raise LabError(f"timeout/exit waiting for {needle!r} on the serial console (last: {tail})")
                self._cond.wait(min(left, 0.5))

    def close(self) -> None:
        self._thread.join(timeout=5)
        self._log.close()


class QMP:
    """Minimal QMP client over a unix socket: commands and a queue of events."""

    def __init__(self, path: Path, timeout: float = 20.0):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(str(path))
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise LabError(f"cannot connect to QMP socket {path}") from None
                time.sleep(0.05)
        self._file = self.sock.makefile("rb")
        self.events: queue.Queue[dict] = queue.Queue()
        self._replies: queue.Queue[dict] = queue.Queue()
        self._lock = threading.Lock()
        greeting = json.loads(self._file.readline())
        if "QMP" not in greeting:
            raise LabError(f"unexpected QMP greeting: {greeting}")
        self._thread = threading.Thread(target=self._reader, daemon=True)
        self._thread.start()
        self.execute("qmp_capabilities")

    def _reader(self) -> None:
        try:
            self._read_loop()
        except OSError:
            pass
        self._replies.put({"error": {"desc": "QMP connection closed"}})

    def _read_loop(self) -> None:
        for raw in iter(self._file.readline, b""):
            try:
                msg = json.loads(raw)
            except ValueError:
                continue
            if "event" in msg:
                msg["_host_time"] = time.monotonic()
                self.events.put(msg)
            else:
                self._replies.put(msg)

    def execute(self, command: str, timeout: float = 120.0, **arguments):
        with self._lock:
            msg = {"execute": command}
            if arguments:
                msg["arguments"] = arguments
            self.sock.sendall(json.dumps(msg).encode() + b"\n")
            try:
                reply = self._replies.get(timeout=timeout)
            except queue.Empty:
                raise LabError(f"QMP {command}: no reply in {timeout} s") from None
        if "error" in reply:
            raise LabError(f"QMP {command}: {reply['error'].get('desc')}")
        return reply.get("return")

    def hmp(self, line: str) -> str:
        return self.execute("human-monitor-command", **{"command-line": line})

    def wait_event(self, name: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise LabError(f"timeout waiting for QMP event {name}")
            try:
                ev = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if ev.get("event") == name:
                return ev

    def read_phys(self, addr: int, count: int, unit: str = "w") -> list[int]:
        """Read `count` units (b/h/w/g) of guest-physical memory or MMIO via HMP xp."""
        text = self.hmp(f"xp /{count}x{unit} {addr:#x}")
        values = []
        for line in text.splitlines():
            if ":" not in line:
                continue
            values += [int(tok, 16) for tok in line.split(":", 1)[1].split()]
        if len(values) != count:
            raise LabError(f"HMP xp at {addr:#x}: expected {count} values, got {text!r}")
        return values

    def dump(self, path: Path, timeout: float = 120.0) -> float:
        """dump-guest-memory (ELF, paging off) to `path`; returns seconds taken."""
        t = time.monotonic()
        self.execute("dump-guest-memory", timeout=timeout, paging=False, protocol=f"file:{path}")
        return time.monotonic() - t

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def start(argv: list[str], rundir: Path) -> tuple[subprocess.Popen, Serial]:
    env = dict(os.environ)
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=open(rundir / "qemu.stderr", "wb"), env=env, cwd=rundir)
    return proc, Serial(proc, rundir / "serial.log")
