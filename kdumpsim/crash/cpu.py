"""CPUs at the crash: the panicking CPU's nmi_shootdown and every other CPU's
NMI handler (paper 3.3; arch/x86/kernel/crash.c, arch/x86/kernel/reboot.c).

The panicking CPU (`machine_crash_shutdown`):
  crash_save_vmcoreinfo (modern) -> NMI IPI to all others -> wait up to
  1000 ms polling every 1 ms -> lapic_shutdown -> disable IO-APIC ->
  hpet_disable (modern) -> crash_save_cpu (own registers) -> machine_kexec.
Every other CPU (`crash_nmi_callback`):
  NMI arrives (latency from the topology) -> crash_save_cpu -> disable its
  local APIC -> count down `waiting_for_crash_ipi` -> halt.
"""

from __future__ import annotations

import random
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kdumpsim import defaults as D
from kdumpsim.firstkernel import printk
from kdumpsim.firstkernel.vmcoreinfo import CRASHTIME_EPOCH, crash_save_vmcoreinfo
from kdumpsim.formats import elf
from kdumpsim.units import transfer_ns

if TYPE_CHECKING:
    from kdumpsim.crash.run import CrashRun
    from kdumpsim.machine.layout import Machine


@dataclass
class CpuState:
    id: int
    pid: int                       # the task it was running: 0 = idle
    regs: dict[str, int]           # the registers its crash note will hold
    answer: str = "ok"             # ok | hung | nmi_lost
    state: str = "running"         # running -> nmi -> halted (or stays running when it never answers)
    nmi_at: int | None = None
    saved_at: int | None = None
    halted_at: int | None = None
    note_addr: int = 0
    events: list[tuple[int, str]] = field(default_factory=list)


def make_cpus(run: CrashRun) -> list[CpuState]:
    """Each CPU's plausible register file at the crash, from its own RNG."""
    m = run.machine
    cfg = m.cfg.cpus
    cpus = []
    for c in range(m.ncpus):
        rng = m.rng("cpu", c)
        panicking = c == cfg.panic_cpu
        busy = panicking or rng.random() < cfg.busy_share
        pid = rng.randrange(1, 32768) if busy else 0
        regs = (_regs_x86_64 if m.arch == "x86_64" else _regs_i386)(run, rng, panicking, busy)
        cpus.append(CpuState(c, pid, regs, answer=cfg.unresponsive.get(c, "ok"), note_addr=m.crash_notes[c]))
    return cpus


def _kernel_text_vaddr(run: CrashRun, rng: random.Random) -> int:
    ks, ke = run.machine.kernel_image
    base = D.START_KERNEL_MAP + ks if run.machine.arch == "x86_64" else run.machine.page_offset + ks
    return base + rng.randrange(0, (ke - ks) // 2) // 16 * 16 + rng.randrange(16)


def _stack_vaddr(run: CrashRun, rng: random.Random) -> int:
    m = run.machine
    lo = m.kernel_image[1]
    top = min(lo + 64 * 1024 * 1024, D.I386_LOWMEM_LIMIT if m.arch == "i386" else 1 << 40)
    return m.direct_map(lo + rng.randrange(0, max(1, top - lo)) // 8 * 8) or 0


def _regs_x86_64(run: CrashRun, rng: random.Random, panicking: bool, busy: bool) -> dict[str, int]:
    names = elf.PRSTATUS["x86_64"].reg_names
    regs = {n: rng.getrandbits(64) if rng.random() < 0.3 else rng.randrange(0, 4096) for n in names}
    sp = _stack_vaddr(run, rng)
    regs.update({
        names[16]: _kernel_text_vaddr(run, rng),   # rip: in the kernel, where the NMI hit / panic ran
        names[19]: sp,                              # rsp
        names[4]: sp + rng.randrange(0x40, 0x200, 8),  # rbp above it
        names[17]: 0x10, names[20]: 0x18,           # cs = __KERNEL_CS, ss = __KERNEL_DS
        # eflags: panic runs with IRQs off (ZF|PF|bit 1 = 0x46, as in the 6.1 sample);
        # an idle CPU is halted with IF set (0x246).
        names[18]: 0x46 if panicking else (0x246 if not busy else rng.choice((0x46, 0x86, 0x246, 0x286))),
        names[15]: 0 if panicking else (1 << 64) - 1,   # orig_rax: -1 for an interrupted context
        names[21]: rng.getrandbits(44) << 4 if busy else 0,  # fs_base: the task's TLS
        names[22]: 0, names[23]: 0, names[24]: 0, names[25]: 0, names[26]: 0,
    })
    return regs


def _regs_i386(run: CrashRun, rng: random.Random, panicking: bool, busy: bool) -> dict[str, int]:
    names = elf.PRSTATUS["i386"].reg_names
    regs = {n: rng.getrandbits(32) if rng.random() < 0.3 else rng.randrange(0, 4096) for n in names}
    sp = _stack_vaddr(run, rng) & 0xFFFF_FFFF
    regs.update({
        names[12]: _kernel_text_vaddr(run, rng) & 0xFFFF_FFFF,   # eip
        names[15]: sp,                                            # esp
        names[5]: sp + rng.randrange(0x40, 0x200, 4),             # ebp
        names[13]: 0x60, names[16]: 0x68,                         # __KERNEL_CS / __KERNEL_DS (2.6 i386)
        names[7]: 0x7B, names[8]: 0x7B, names[9]: 0, names[10]: 0,   # ds, es = __USER_DS; fs, gs
        names[14]: 0x46 if panicking else (0x246 if not busy else rng.choice((0x46, 0x246, 0x286))),
        names[11]: 0 if panicking else 0xFFFF_FFFF,                # orig_eax
    })
    return regs


def crash_notes_memory_init(m: Machine, time: int) -> None:
    """At boot the note buffers are zeroed (static .bss array in 2005, a zeroed
    per-cpu allocation today): a CPU that never saves leaves an empty note."""
    for addr in m.crash_notes + m.hotplug_notes:      # every possible CPU's (alloc_percpu zeroes)
        m.memory.write(addr, bytes(m.crash_note_size), time, "kernel")


def crash_save_cpu(run: CrashRun, cpu: CpuState) -> None:
    """Write the CPU's CORE/NT_PRSTATUS note and the final null note into its
    crash_notes buffer (kernel/crash_core.c crash_save_cpu, append_elf_note, final_note)."""
    desc = elf.pack_prstatus(run.machine.arch, cpu.pid, cpu.regs)
    note = elf.pack_note(b"CORE", elf.NT_PRSTATUS, desc) + elf.FINAL_NOTE
    run.machine.memory.write(cpu.note_addr, note, run.env.now, f"cpu{cpu.id}")
    cpu.saved_at = run.env.now
    run.trace(run.env.now, f"cpu{cpu.id}", "crash_save_cpu", addr=cpu.note_addr, bytes=len(note), pid=cpu.pid)


def crash_nmi_callback(run: CrashRun, cpu: CpuState, latency: int) -> Generator:
    """A non-panicking CPU: the NMI IPI arrives, it saves state and halts."""
    env, t = run.env, run.timing
    if cpu.answer == "nmi_lost":
        run.trace(env.now, f"cpu{cpu.id}", "nmi_lost")
        return
    yield env.timeout(latency)
    if cpu.answer == "hung":
        # Stuck with NMIs blocked (e.g. already inside an NMI handler): the IPI latches, nothing runs.
        run.trace(env.now, f"cpu{cpu.id}", "nmi_blocked")
        return
    cpu.state, cpu.nmi_at = "nmi", env.now
    run.trace(env.now, f"cpu{cpu.id}", "nmi_received")
    yield env.timeout(t.crash_save_cpu)
    crash_save_cpu(run, cpu)
    run.trace(env.now, f"cpu{cpu.id}", "lapic_disabled")
    run.waiting_for_crash_ipi -= 1
    cpu.state, cpu.halted_at = "halted", env.now
    run.trace(env.now, f"cpu{cpu.id}", "halted")


def panic_front(run: CrashRun, me: CpuState, actor: str) -> Generator:
    """panic() before kdump (kernel/panic.c, 6.1): the banner and stack go to the
    console, which a synchronous one makes the CPU wait for; with
    crash_kexec_post_notifiers the other CPUs are stopped first
    (crash_smp_send_stop), then the panic notifiers and kmsg_dump run."""
    env, m = run.env, run.machine
    printk.crash_log(m, env.now, me)
    if m.cfg.kernel.console_rate:
        yield env.timeout(transfer_ns(D.PANIC_CONSOLE_BYTES, m.cfg.kernel.console_rate))
        run.trace(env.now, actor, "panic_printed", bytes=D.PANIC_CONSOLE_BYTES)
    if m.cfg.kernel.crash_kexec_post_notifiers:
        yield from nmi_shootdown_cpus(run, me, actor)
        yield env.timeout(run.timing.panic_notifiers)
        run.trace(env.now, actor, "panic_notifiers_done")


def nmi_shootdown_cpus(run: CrashRun, me: CpuState, actor: str) -> Generator:
    """One NMI IPI to all but self, then the 1 ms polling wait, at most 1000 ms."""
    env, t, m = run.env, run.timing, run.machine
    others = [c for c in run.cpus if c is not me]
    run.waiting_for_crash_ipi = len(others)
    run.trace(env.now, actor, "nmi_ipi_sent", targets=len(others))
    for c in others:
        env.process(crash_nmi_callback(run, c, m.topology.ipi_latency(me.id, c.id)))
    msecs = t.nmi_timeout // t.nmi_poll
    while run.waiting_for_crash_ipi > 0 and msecs:
        yield env.timeout(t.nmi_poll)     # mdelay(1)
        msecs -= 1
    missing = [c.id for c in others if c.state != "halted"]
    if missing:
        run.trace(env.now, actor, "nmi_timeout", missing=missing)
    run.mark("nmi_shootdown_done", actor, waited_ns=env.now)
    printk.shootdown_log(m, env.now, run.cpus, me.id)


def machine_crash_shutdown(run: CrashRun) -> Generator:
    """The panicking CPU, from panic() to the jump into purgatory."""
    env, t, m = run.env, run.timing, run.machine
    me = run.cpus[m.cfg.cpus.panic_cpu]
    actor = f"cpu{me.id}"
    run.trace(env.now, actor, "panic", pid=me.pid)
    yield from panic_front(run, me, actor)
    if m.vmcoreinfo_addr is not None:                # __crash_kexec
        addr = crash_save_vmcoreinfo(m, env.now, actor)
        run.trace(env.now, actor, "crash_save_vmcoreinfo", addr=addr, crashtime=CRASHTIME_EPOCH)
    if "nmi_shootdown_done" not in run.phase:
        yield from nmi_shootdown_cpus(run, me, actor)
    # 2005 (paper 3.3): lapic_shutdown, then disable_IO_APIC. Modern
    # native_machine_crash_shutdown: clear_IO_APIC, lapic_shutdown, ..., hpet_disable.
    steps = [("lapic", t.lapic_shutdown), ("ioapic", t.ioapic_disable)]
    if m.era == "modern":
        steps = [("ioapic", t.ioapic_disable), ("lapic", t.lapic_shutdown), ("hpet", t.hpet_disable)]
    for what, cost in steps:
        yield env.timeout(cost)
        if what == "ioapic":
            run.trace(env.now, "ioapic", "ioapic_disabled")
        else:
            run.trace(env.now, actor, f"{what}_disabled" if what == "hpet" else "lapic_disabled")
    crash_save_cpu(run, me)
    me.state = "kexec"
    if m.cma is not None:
        # __crash_kexec: crash_cma_clear_pending_dma() waits for DMA into the CMA
        # area to finish before the capture kernel may use it (docs/SOURCES.md §11).
        run.trace(env.now, actor, "crash_cma_clear_pending_dma", wait_ns=t.cma_dma_wait)
        yield env.timeout(t.cma_dma_wait)
    yield env.timeout(t.machine_kexec)
    run.trace(env.now, actor, "machine_kexec", entry=run.image.entry)
