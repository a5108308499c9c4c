"""Tagged, numbered Ethernet frames sent to the guest NIC over loopback UDP.

With `-netdev dgram,local.host=127.0.0.1,local.port=P1,...` QEMU takes each
UDP datagram arriving at 127.0.0.1:P1 as one Ethernet frame for the guest NIC
(QEMU 7.2 docs/system/invocation.rst, net/dgram.c).  A frame is:

    dst MAC (the guest NIC's) | src MAC | ethertype 0x88B5 |
    TAG (16 bytes) | seq (u64 LE) | host send time ns (u64 LE) | run id (u32 LE) | zero padding

0x88B5 is the IEEE 802 "local experimental" ethertype (IEEE Std 802-2014
clause 9.2.4); no protocol handler exists for it in Linux, so the stack drops
the frame after the NIC has DMA'd it (net/core/dev.c __netif_receive_skb_core
finds no ptype and frees the skb).

The sender only ever targets 127.0.0.1, and is bounded in frame count and
time; it stops by itself.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

TAG = b"kdumpsimLABframe"
ETHERTYPE = 0x88B5
SRC_MAC = bytes.fromhex("525400000001")
HEADER = struct.Struct("<16sQQI")          # tag, seq, send ns, run id
ETH_HDR = 14
LOOPBACK = "127.0.0.1"


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def make_frame(dst_mac: bytes, seq: int, send_ns: int, run_id: int, frame_len: int) -> bytes:
    body = HEADER.pack(TAG, seq, send_ns, run_id)
    head = dst_mac + SRC_MAC + struct.pack(">H", ETHERTYPE)
    frame = head + body
    return frame + b"\0" * max(0, frame_len - len(frame))


def parse_at(buf, offset: int) -> tuple[int, int, int] | None:
    """(seq, send_ns, run_id) of the tag found at `offset` of buf, or None."""
    if offset + HEADER.size > len(buf):
        return None
    tag, seq, send_ns, run_id = HEADER.unpack_from(buf, offset)
    if tag != TAG:
        return None
    return seq, send_ns, run_id


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


class Sender:
    """Sends frames at a fixed rate from 127.0.0.1:host_port to 127.0.0.1:guest_port."""

    def __init__(self, guest_port: int, host_port: int, dst_mac: str, rate_pps: float,
                 max_packets: int, max_seconds: float, frame_len: int, run_id: int):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOOPBACK, host_port))   # QEMU's remote end; frames from the guest are ignored
        self.dest = (LOOPBACK, guest_port)
        self.dst_mac = mac_bytes(dst_mac)
        self.rate = float(rate_pps)
        self.max_packets = int(max_packets)
        self.max_seconds = float(max_seconds)
        self.frame_len = int(frame_len)
        self.run_id = run_id
        self.sent: list[tuple[int, int]] = []     # (seq, host monotonic ns)
        self.stop_reason = ""
        self.pauses: list[list[int]] = []          # [start ns, end ns] of each pause
        self._paused_since: int | None = None
        self._resume = threading.Event()
        self._resume.set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        t0 = time.monotonic()
        seq = 1
        while True:
            if self._stop.is_set():
                self.stop_reason = "stopped"
                break
            if seq > self.max_packets:
                self.stop_reason = "max_packets"
                break
            if not self._resume.is_set():
                self._resume.wait(0.05)
                continue
            due = t0 + self.paused_total + (seq - 1) / self.rate
            now = time.monotonic()
            if now - t0 - self.paused_total > self.max_seconds:
                self.stop_reason = "max_seconds"
                break
            if due > now:
                self._stop.wait(due - now)
                continue
            ns = time.monotonic_ns()
            frame = make_frame(self.dst_mac, seq, ns, self.run_id, self.frame_len)
            try:
                self.sock.sendto(frame, self.dest)
            except OSError:
                pass          # e.g. ECONNREFUSED after QEMU quit: the frame is lost, counted as sent
            self.sent.append((seq, ns))
            seq += 1

    @property
    def paused_total(self) -> float:
        return sum(b - a for a, b in self.pauses) / 1e9

    def pause(self) -> None:
        """Hold sending (while the VM is paused for the truth snapshot)."""
        self._resume.clear()
        self._paused_since = time.monotonic_ns()

    def resume(self) -> None:
        if self._paused_since is not None:
            self.pauses.append([self._paused_since, time.monotonic_ns()])
            self._paused_since = None
        self._resume.set()

    def count(self) -> int:
        return len(self.sent)

    def stop(self) -> None:
        self._stop.set()
        self._resume.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        try:
            self.sock.close()
        except OSError:
            pass
