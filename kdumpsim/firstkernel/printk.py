"""The first kernel's log buffer, holding the simulated run's own messages
(issue #8), in the format of the modelled kernel version:

- 5.10 and later (6.1): the lockless ring buffer (kernel/printk/printk_ringbuffer.[ch]):
  `prb` points at printk_rb_static; a descriptor ring (prb_desc: state_var,
  text_blk_lpos) with a parallel printk_info array (seq, ts_nsec, text_len,
  facility, flags:5 level:3, caller_id, dev_info), and a text data ring whose
  blocks are [unsigned long id][text] aligned to 8 (data_alloc). makedumpfile
  (printk.c dump_lockless_dmesg) walks tail_id..head_id.
- before (4.18): variable-length `struct printk_log` records in __log_buf
  (kernel/printk/printk.c log_store: header, text, dict, padded to
  LOG_ALIGN 4), between log_first_idx and log_next_idx; crash --log
  (kernel.c dump_variable_length_record) reads them.

Boot lines are written at boot (time < 0, actor "kernel"); the panic lines
by the panicking CPU at the panic, and the NMI shootdown lines by it when the
shootdown ends (time >= 0, actor "cpuN": the truth the dump should hold).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from kdumpsim import defaults as D
from kdumpsim.firstkernel import mm as FK
from kdumpsim.firstkernel.vmcoreinfo import UTS_VERSION
from kdumpsim.names import KERNEL, cpu_actor

if TYPE_CHECKING:
    from kdumpsim.machine.layout import Machine


class CpuLike(Protocol):
    id: int
    pid: int
    state: str
    answer: str

KERN_EMERG, KERN_WARNING, KERN_INFO = 0, 4, 6
DESC_ID_MASK = (1 << 62) - 1                    # ~DESC_FLAGS_MASK (printk_ringbuffer.h)
DESC_FINALIZED = 2
LOG_NEWLINE = 2                                  # 4.18 enum log_flags
_M64 = (1 << 64) - 1


@dataclass(frozen=True)
class Record:
    ts_ns: int          # since boot
    level: int
    text: str
    caller: int = 0     # printk caller_id: pid, or 0x80000000 + cpu outside task context


class LogBuffer:
    """Appends records to the first kernel's log buffer in simulated RAM."""

    def __init__(self, k: FK.FirstKernel):
        self.k = k
        self.records: list[Record] = []
        self.count_bits = D.LOG_BUF_SHIFT - D.PRB_AVGBITS
        self.count = 1 << self.count_bits
        self.size = 1 << D.LOG_BUF_SHIFT
        self.desc0 = (-(self.count + 1)) & DESC_ID_MASK        # DESC0_ID
        self.lpos0 = (-self.size) & _M64                        # BLK0_LPOS
        self.next_lpos = self.lpos0
        self.next_idx = 0                                       # 4.18 log_next_idx

    # ------------------------------------------------------------ encoding
    def _prb_pieces(self, i: int, r: Record) -> tuple[int, bytes, bytes, int, bytes]:
        """(desc index, desc, info, data offset, data block) of record number i."""
        text = r.text.encode()[:0xFFFF]
        rid = (self.desc0 + 1 + i) & DESC_ID_MASK
        begin = self.next_lpos
        blk = (8 + len(text) + 7) & ~7
        nxt = (begin + blk) & _M64
        desc = struct.pack("<QQQ", rid | (DESC_FINALIZED << 62), begin, nxt)
        info = struct.pack("<QQHBBI", i, r.ts_ns, len(text), 0, r.level << 5, r.caller) + bytes(64)
        data = struct.pack("<Q", rid) + text + bytes(blk - 8 - len(text))
        return rid % self.count, desc, info, begin % self.size, data

    def _printk_log(self, r: Record) -> bytes:
        text = r.text.encode()[:0xFFFF]
        size = 16 + len(text)
        pad = (-size) & 3
        return struct.pack("<QHHHBB", r.ts_ns, size + pad, len(text), 0, 0, LOG_NEWLINE | (r.level << 5)) \
            + text + bytes(pad)

    # ------------------------------------------------------------ writing
    def append(self, records: list[Record], time: int, actor: str) -> None:
        k, mem = self.k, self.k.m.memory
        if not records:
            return
        if not k.prb:
            blob = b"".join(self._printk_log(r) for r in records)
            if self.next_idx + len(blob) + 16 > self.size:
                raise ValueError("the simulated kernel log does not fit __log_buf")
            mem.write(k.text_paddr(FK.LOG_BUF) + self.next_idx, blob, time, actor)
            self.next_idx += len(blob)
            self.records += records
            mem.write(k.text_paddr(FK.DATA + FK.VAR["log_next_idx"]), struct.pack("<I", self.next_idx), time, actor)
            return
        descs, infos, datas = [], [], []
        for r in records:
            i = len(self.records)
            idx, desc, info, off, data = self._prb_pieces(i, r)
            if off + len(data) >= self.size or i >= self.count - 1:
                raise ValueError("the simulated kernel log does not fit the printk ring")
            descs.append((idx, desc))
            infos.append((idx, info))
            datas.append((off, data))
            self.next_lpos = (self.next_lpos + len(data)) & _M64
            self.records.append(r)
        # Contiguous runs: one write each (text, then infos, then descriptors, then the head).
        mem.write(k.text_paddr(FK.LOG_BUF) + datas[0][0], b"".join(d for _, d in datas), time, actor)
        mem.write(k.text_paddr(FK.PRB_INFOS) + infos[0][0] * 88, b"".join(x for _, x in infos), time, actor)
        mem.write(k.text_paddr(FK.PRB_DESCS) + descs[0][0] * 24, b"".join(x for _, x in descs), time, actor)
        head = (self.desc0 + len(self.records)) & DESC_ID_MASK
        tail = (self.desc0 + 1) & DESC_ID_MASK
        rb = k.text_paddr(FK.PRINTK_RB_STATIC)
        if len(self.records) == len(records):       # first append: the whole printk_ringbuffer
            ring = struct.pack("<IIQQQQQ", self.count_bits, 0, k.text(FK.PRB_DESCS), k.text(FK.PRB_INFOS),
                               head, tail, head)
            data_ring = struct.pack("<IIQQQ", D.LOG_BUF_SHIFT, 0, k.text(FK.LOG_BUF), self.next_lpos, self.lpos0)
            mem.write(rb, ring + data_ring + bytes(8), time, actor)
        else:
            mem.write(rb + 24, struct.pack("<Q", head), time, actor)                 # desc_ring.head_id
            mem.write(rb + 40, struct.pack("<Q", head), time, actor)                 # last_finalized_id
            mem.write(rb + 64, struct.pack("<Q", self.next_lpos), time, actor)       # text_data_ring.head_lpos

    def text(self) -> list[str]:
        """The log as makedumpfile --dump-dmesg prints it."""
        return [f"[{r.ts_ns // 10**9:5d}.{r.ts_ns % 10**9 // 1000:06d}] {r.text}" for r in self.records]


# ------------------------------------------------------------------ the run's messages
_E820 = {"System RAM": "usable", "ACPI Tables": "ACPI data", "ACPI Non-volatile Storage": "ACPI NVS"}


def _boot_records(m: Machine) -> list[Record]:
    k, cfg = m.kernel_structs, m.cfg
    rel, six = k.osrelease, k.version != "4.18"
    cmdline = f"BOOT_IMAGE=/vmlinuz-{rel} root=/dev/sda2 ro crashkernel={cfg.kexec.crashkernel}"
    ms = lambda x: int(x * 1_000_000)         # noqa: E731
    nodes = cfg.memory.numa_nodes
    if six:
        banner = (f"Linux version {rel} (kdumpsim@kdumpsim) (gcc-12 (Debian 12.2.0-14) 12.2.0, "
                  f"GNU ld (GNU Binutils for Debian) 2.40) {UTS_VERSION[m.era]}")
    else:
        banner = f"Linux version {rel} (mockbuild@kdumpsim) (gcc version 8.5.0 (GCC)) #1 SMP"
    out = [Record(0, 5, banner), Record(0, KERN_INFO, f"Command line: {cmdline}"),
           Record(0, KERN_INFO, "BIOS-provided physical RAM map:")]
    for r in cfg.memory.iomem:
        if r.type == "PCI Bus":
            continue
        out.append(Record(0, KERN_INFO, f"BIOS-e820: [mem {r.start:#018x}-{r.end:#018x}] "
                                        f"{_E820.get(r.type, 'reserved')}"))
    res = m.reservation
    out += [
        Record(ms(33), KERN_INFO, f"Reserving {res.size >> 20}MB of memory at {res.start >> 20}MB for crashkernel "
                                  f"(System RAM: {m.ram_total >> 20}MB)"),
        Record(ms(54), KERN_INFO, f"smpboot: Allowing {m.ncpus} CPUs, 0 hotplug CPUs"),
        Record(ms(72), 5, f"Kernel command line: {cmdline}"),
        Record(ms(135), KERN_INFO, f"Memory: {(m.ram_total - res.size) >> 10}K/{m.ram_total >> 10}K available"),
        Record(ms(510), KERN_INFO, "smp: Bringing up secondary CPUs ..."),
        Record(ms(630), KERN_INFO, f"smp: Brought up {nodes} node{'s' if nodes > 1 else ''}, {m.ncpus} CPUs"),
        Record(ms(631), KERN_INFO, f"smpboot: Total of {m.ncpus} processors activated"),
        Record(ms(1714), KERN_INFO, "Freeing unused kernel image (initmem) memory: 2824K"),
    ]
    for i, d in enumerate(cfg.devices):
        out.append(Record(ms(2000 + i), KERN_INFO, f"kdumpsim: {d.name}: {d.kind} DMA device on {d.bus}"))
    return out


def boot_log(m: Machine, time: int) -> None:
    """The log as the running kernel left it before the panic."""
    k = m.kernel_structs
    k.log = LogBuffer(k)
    mem = m.memory
    if not k.prb:
        mem.write(k.text_paddr(FK.DATA + FK.VAR["log_first_idx"]), struct.pack("<III", 0, 0, 0), time, KERNEL)
    k.log.append(_boot_records(m), time, KERNEL)


def crash_log(m: Machine, time: int, panic_cpu: CpuLike) -> None:
    """panic()'s lines: the banner and (a short) stack, as the panicking CPU logs them."""
    k = m.kernel_structs
    me = panic_cpu
    six = k is None or k.version != "4.18"
    lines = [(KERN_INFO, "sysrq: Trigger a crash" if six else "sysrq: SysRq : Trigger a crash"),
             (KERN_EMERG, "Kernel panic - not syncing: sysrq triggered crash"),
             (KERN_WARNING, f"CPU: {me.id} PID: {me.pid} Comm: bash Kdump: loaded Not tainted "
                            f"{k.osrelease if k is not None else D.OSRELEASE[m.era]} #1"),
             (KERN_WARNING, f"Hardware name: kdumpsim {m.cfg.name}"),
             (KERN_WARNING, "Call Trace:")]
    frames = ["dump_stack_lvl+0x44/0x5c", "panic+0x118/0x2f4", "sysrq_handle_crash+0x16/0x20"]
    lines += [(KERN_WARNING, " <TASK>")] if six else []
    lines += [(KERN_WARNING, f" {f}") for f in frames]
    lines += [(KERN_WARNING, " </TASK>")] if six else []
    if k is not None and k.log is not None:
        k.log.append([Record(k.uptime + time, lvl, text, me.pid) for lvl, text in lines], time, cpu_actor(me.id))


def shootdown_log(m: Machine, time: int, cpus: Sequence[CpuLike], panic_cpu: int) -> None:
    """The shootdown's outcome and each CPU's state, logged by the panicking CPU."""
    k = m.kernel_structs
    if k is None or k.log is None:
        return
    others = [c for c in cpus if c.id != panic_cpu]
    missing = [c.id for c in others if c.state != "halted"]
    if missing:
        head = (f"kdumpsim: NMI shootdown: {len(others) - len(missing)} of {len(others)} CPUs stopped; "
                f"timed out after {time / 1e6:g} ms waiting for CPU {', '.join(map(str, missing))}")
    else:
        head = f"kdumpsim: NMI shootdown: all {len(others)} other CPUs stopped in {time / 1e6:g} ms"

    def state(c: CpuLike) -> str:
        what = "panic" if c.id == panic_cpu else c.state
        return what + (f" ({c.answer})" if c.answer != "ok" else "")
    lines = [head] + [f"kdumpsim: CPU {c.id}: {state(c)}, pid {c.pid}" for c in cpus]
    caller = 0x8000_0000 + panic_cpu
    k.log.append([Record(k.uptime + time, KERN_WARNING, t, caller) for t in lines], time, cpu_actor(panic_cpu))


def expected_dmesg(m: Machine) -> list[str]:
    """The log lines a reader of the run's vmcore should print."""
    k = m.kernel_structs
    return [] if k is None or k.log is None else k.log.text()
