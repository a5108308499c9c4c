"""The VMCOREINFO note of modern kernels (2.6.24+; kernel/vmcore_info.c,
arch/x86/kernel/machine_kexec_64.c arch_crash_save_vmcoreinfo).

The first kernel fills it at boot (crash_save_vmcoreinfo_init); at the crash
crash_save_vmcoreinfo appends CRASHTIME and rewrites the note. kexec-tools
points a PT_NOTE at its physical address (/sys/kernel/vmcoreinfo).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import defaults as D
from . import elf

if TYPE_CHECKING:
    from .machine import Machine
    from .sim import CrashRun

CRASHTIME_EPOCH = 1_795_695_492    # wall clock at the simulated panic (the 6.1 sample's CRASHTIME)


def vmcoreinfo_lines(m: Machine) -> list[str]:
    """Key=value lines in the order the kernel emits them (subset, see 6.1 sample)."""
    ks = m.kernel_image[0]
    if m.arch == "x86_64":
        stext = D.START_KERNEL_MAP + ks
        pgd = stext + 0x1C0_0000
        return [f"OSRELEASE={D.OSRELEASE[m.era]}", f"PAGESIZE={D.PAGE_SIZE}",
                f"SYMBOL(init_uts_ns)={stext + 0x1D0_0000:x}", f"SYMBOL(swapper_pg_dir)={pgd:x}",
                f"SYMBOL(_stext)={stext:x}", "NUMBER(phys_base)=0", f"SYMBOL(init_top_pgt)={pgd:x}",
                "NUMBER(pgtable_l5_enabled)=0", "KERNELOFFSET=0"]
    stext = m.page_offset + ks
    return [f"OSRELEASE={D.OSRELEASE[m.era]}", f"PAGESIZE={D.PAGE_SIZE}",
            f"SYMBOL(init_uts_ns)={stext + 0x30_0000:x}", f"SYMBOL(swapper_pg_dir)={stext + 0x20_0000:x}",
            f"SYMBOL(_stext)={stext:x}"]


def vmcoreinfo_note(m: Machine, crashtime: int | None) -> bytes:
    lines = vmcoreinfo_lines(m) + ([f"CRASHTIME={crashtime}"] if crashtime is not None else [])
    text = "".join(line + "\n" for line in lines).encode()
    return elf.pack_note(b"VMCOREINFO", 0, text) + elf.FINAL_NOTE


def save_at_boot(m: Machine, time: int) -> None:
    """crash_save_vmcoreinfo_init: the note exists, without CRASHTIME, from boot on."""
    if m.vmcoreinfo_addr is not None:
        m.memory.write(m.vmcoreinfo_addr, vmcoreinfo_note(m, None), time, "kernel")


def crash_save_vmcoreinfo(run: CrashRun) -> None:
    m = run.machine
    note = vmcoreinfo_note(m, CRASHTIME_EPOCH)
    actor = f"cpu{m.cfg.cpus.panic_cpu}"
    m.memory.write(m.vmcoreinfo_addr, note, run.env.now, actor)
    run.trace(run.env.now, actor, "crash_save_vmcoreinfo", addr=m.vmcoreinfo_addr, crashtime=CRASHTIME_EPOCH)
