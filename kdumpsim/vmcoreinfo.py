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

# Where the symbols VMCOREINFO names sit in the first kernel's image, from _stext.
INIT_UTS_NS_OFFSET = {"x86_64": 0x1D0_0000, "i386": 0x30_0000}
SWAPPER_PG_DIR_OFFSET = {"x86_64": 0x1C0_0000, "i386": 0x20_0000}
NEW_UTS_LEN = 64    # include/uapi/linux/utsname.h __NEW_UTS_LEN
UTS_MACHINE = {"x86_64": "x86_64", "i386": "i686"}   # uname -m (i386 kernels patch "i386" to the CPU family)
UTS_NODENAME = "kdumpsim"                            # the hostname userspace set
UTS_VERSION = {"2005": "#1 SMP", "modern": "#1 SMP PREEMPT_DYNAMIC"}


def stext_vaddr(m: Machine) -> int:
    """_stext: the kernel-text mapping on x86_64 (phys_base 0, no KASLR), the direct map on i386."""
    base = D.START_KERNEL_MAP if m.arch == "x86_64" else m.page_offset
    return base + m.kernel_image[0]


def init_uts_ns_paddr(m: Machine) -> int:
    return m.kernel_image[0] + INIT_UTS_NS_OFFSET[m.arch]


def vmcoreinfo_lines(m: Machine) -> list[str]:
    """Key=value lines in the order the kernel emits them (subset, see 6.1 sample)."""
    stext = stext_vaddr(m)
    uts, pgd = stext + INIT_UTS_NS_OFFSET[m.arch], stext + SWAPPER_PG_DIR_OFFSET[m.arch]
    if m.arch == "x86_64":
        return [f"OSRELEASE={D.OSRELEASE[m.era]}", f"PAGESIZE={D.PAGE_SIZE}",
                f"SYMBOL(init_uts_ns)={uts:x}", "OFFSET(uts_namespace.name)=0",
                f"SYMBOL(swapper_pg_dir)={pgd:x}",
                f"SYMBOL(_stext)={stext:x}", "NUMBER(phys_base)=0", f"SYMBOL(init_top_pgt)={pgd:x}",
                "NUMBER(pgtable_l5_enabled)=0", "KERNELOFFSET=0"]
    return [f"OSRELEASE={D.OSRELEASE[m.era]}", f"PAGESIZE={D.PAGE_SIZE}",
            f"SYMBOL(init_uts_ns)={uts:x}", "OFFSET(uts_namespace.name)=0",
            f"SYMBOL(swapper_pg_dir)={pgd:x}", f"SYMBOL(_stext)={stext:x}"]


def init_uts_ns_name(m: Machine) -> bytes:
    """init_uts_ns.name, a struct new_utsname (include/uapi/linux/utsname.h:
    six char[65]: sysname, nodename, release, version, machine, domainname),
    as init/version.c initialises it and userspace's sethostname leaves it.
    In 6.1 `name` is struct uts_namespace's first member (include/linux/utsname.h;
    the 6.1 sample's VMCOREINFO says OFFSET(uts_namespace.name)=0)."""
    fields = ("Linux", UTS_NODENAME, D.OSRELEASE[m.era], UTS_VERSION[m.era], UTS_MACHINE[m.arch], "(none)")
    return b"".join(f.encode().ljust(NEW_UTS_LEN + 1, b"\0") for f in fields)


def vmcoreinfo_note(m: Machine, crashtime: int | None) -> bytes:
    lines = vmcoreinfo_lines(m) + ([f"CRASHTIME={crashtime}"] if crashtime is not None else [])
    text = "".join(line + "\n" for line in lines).encode()
    return elf.pack_note(b"VMCOREINFO", 0, text) + elf.FINAL_NOTE


def save_at_boot(m: Machine, time: int) -> None:
    """crash_save_vmcoreinfo_init: the note exists, without CRASHTIME, from boot on.

    The symbols it names must hold what they name: readers follow them.
    libkdumpfile (src/kdumpfile/open.c uts_name_from_init_uts_ns, run when
    addrxlat.ostype is set to "linux") reads SYMBOL(init_uts_ns) through the
    kernel-text mapping and refuses the OS type ("UTS_SYSNAME not found") unless
    "Linux" is there; crash reads uname from it too. So the kernel's static
    init_uts_ns is in its image from boot on."""
    if m.vmcoreinfo_addr is not None:
        m.memory.write(init_uts_ns_paddr(m), init_uts_ns_name(m), time, "kernel")
        m.memory.write(m.vmcoreinfo_addr, vmcoreinfo_note(m, None), time, "kernel")


def crash_save_vmcoreinfo(run: CrashRun) -> None:
    m = run.machine
    note = vmcoreinfo_note(m, CRASHTIME_EPOCH)
    actor = f"cpu{m.cfg.cpus.panic_cpu}"
    m.memory.write(m.vmcoreinfo_addr, note, run.env.now, actor)
    run.trace(run.env.now, actor, "crash_save_vmcoreinfo", addr=m.vmcoreinfo_addr, crashtime=CRASHTIME_EPOCH)
