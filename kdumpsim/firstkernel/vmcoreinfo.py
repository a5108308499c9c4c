"""The VMCOREINFO note of modern kernels (2.6.24+; kernel/vmcore_info.c,
arch/x86/kernel/machine_kexec_64.c arch_crash_save_vmcoreinfo).

The first kernel fills it at boot (crash_save_vmcoreinfo_init); at the crash
crash_save_vmcoreinfo appends CRASHTIME and rewrites the note. kexec-tools
points a PT_NOTE at its physical address (/sys/kernel/vmcoreinfo).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from kdumpsim import defaults as D
from kdumpsim.firstkernel import mm as FK
from kdumpsim.formats import elf
from kdumpsim.names import KERNEL

if TYPE_CHECKING:
    from kdumpsim.machine.layout import Machine

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
    """Where init_uts_ns.name is (4.18: after struct uts_namespace's 4-byte kref)."""
    k = m.kernel_structs
    name_off = 4 if k is not None and k.version == "4.18" else 0
    return m.kernel_image[0] + INIT_UTS_NS_OFFSET[m.arch] + name_off


def vmcoreinfo_lines(m: Machine) -> list[str]:
    """Key=value lines in the order the kernel emits them."""
    if m.kernel_structs is not None:
        return _lines_x86_64(m)
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


# struct sizes and offsets the 6.1 sample's VMCOREINFO gives (x86_64, Debian
# config); 4.18 uses the same struct page / mm layout (mm_types.h was reordered
# to this layout in 4.18) and the printk_log record of kernel/printk/printk.c.
_MM_LINES = """SIZE(page)=64
SIZE(pglist_data)=174208
SIZE(zone)=1536
SIZE(free_area)=88
SIZE(list_head)=16
SIZE(nodemask_t)=128
OFFSET(page.flags)=0
OFFSET(page._refcount)=52
OFFSET(page.mapping)=24
OFFSET(page.lru)=8
OFFSET(page._mapcount)=48
OFFSET(page.private)=40
OFFSET(page.compound_dtor)=16
OFFSET(page.compound_order)=17
OFFSET(page.compound_head)=8
OFFSET(pglist_data.node_zones)=0
OFFSET(pglist_data.nr_zones)=171552
OFFSET(pglist_data.node_start_pfn)=171560
OFFSET(pglist_data.node_spanned_pages)=171576
OFFSET(pglist_data.node_id)=171584
OFFSET(zone.free_area)=256
OFFSET(zone.vm_stat)=1344
OFFSET(zone.spanned_pages)=144
OFFSET(free_area.free_list)=0
OFFSET(list_head.next)=0
OFFSET(list_head.prev)=8
OFFSET(vmap_area.va_start)=0
OFFSET(vmap_area.list)=40
LENGTH(zone.free_area)=11""".split("\n")

# kernel/printk/printk.c log_buf_vmcoreinfo_setup (6.1: the prb ring).
_PRB_LINES = """SIZE(printk_ringbuffer)=88
OFFSET(printk_ringbuffer.desc_ring)=0
OFFSET(printk_ringbuffer.text_data_ring)=48
OFFSET(printk_ringbuffer.fail)=80
SIZE(prb_desc_ring)=48
OFFSET(prb_desc_ring.count_bits)=0
OFFSET(prb_desc_ring.descs)=8
OFFSET(prb_desc_ring.infos)=16
OFFSET(prb_desc_ring.head_id)=24
OFFSET(prb_desc_ring.tail_id)=32
SIZE(prb_desc)=24
OFFSET(prb_desc.state_var)=0
OFFSET(prb_desc.text_blk_lpos)=8
SIZE(prb_data_blk_lpos)=16
OFFSET(prb_data_blk_lpos.begin)=0
OFFSET(prb_data_blk_lpos.next)=8
SIZE(printk_info)=88
OFFSET(printk_info.seq)=0
OFFSET(printk_info.ts_nsec)=8
OFFSET(printk_info.text_len)=16
OFFSET(printk_info.caller_id)=20
OFFSET(printk_info.dev_info)=24
SIZE(dev_printk_info)=64
OFFSET(dev_printk_info.subsystem)=0
LENGTH(printk_info_subsystem)=16
OFFSET(dev_printk_info.device)=16
LENGTH(printk_info_device)=48
SIZE(prb_data_ring)=32
OFFSET(prb_data_ring.size_bits)=0
OFFSET(prb_data_ring.data)=8
OFFSET(prb_data_ring.head_lpos)=16
OFFSET(prb_data_ring.tail_lpos)=24
SIZE(atomic_long_t)=8
OFFSET(atomic_long_t.counter)=0
SIZE(latched_seq)=24
OFFSET(latched_seq.val)=8""".split("\n")

# 4.18 (struct printk_log { u64 ts_nsec; u16 len, text_len, dict_len; u8 facility; u8 flags:5, level:3; }).
_PRINTK_LOG_LINES = """SIZE(printk_log)=16
OFFSET(printk_log.ts_nsec)=0
OFFSET(printk_log.len)=8
OFFSET(printk_log.text_len)=10
OFFSET(printk_log.dict_len)=12""".split("\n")


def _lines_x86_64(m: Machine) -> list[str]:
    """kernel/crash_core.c crash_save_vmcoreinfo_init (6.1: kernel/crash_core.c,
    moved to vmcore_info.c in 6.9) then arch_crash_save_vmcoreinfo
    (arch/x86/kernel/machine_kexec_64.c), in the 6.1 sample's order. Left out:
    the kallsyms_* symbols the sample's 6.1.192 stable kernel adds (a reader
    would follow them into a kallsyms table we do not build)."""
    k = m.kernel_structs
    six = k.version in ("6.1", "6.6")     # 6.6 simulated as 6.1 (docs/SOURCES.md §12)
    pg = k.pg
    out = [f"OSRELEASE={k.osrelease}"]
    if six:   # BUILD-ID: 5.9+ (lib/buildid.c); ours names no real build
        out.append("BUILD-ID=" + hashlib.sha1(k.osrelease.encode()).hexdigest())
    out += [f"PAGESIZE={D.PAGE_SIZE}", f"SYMBOL(init_uts_ns)={k.symbol('init_uts_ns'):x}"]
    if six:   # 5.11+ (the 4.18 struct has a kref before the name)
        out.append("OFFSET(uts_namespace.name)=0")
    out += [f"SYMBOL(node_online_map)={k.symbol('node_online_map'):x}",
            f"SYMBOL(swapper_pg_dir)={k.symbol('swapper_pg_dir'):x}",
            f"SYMBOL(_stext)={k.symbol('_stext'):x}",
            f"SYMBOL(vmap_area_list)={k.symbol('vmap_area_list'):x}",
            f"SYMBOL(mem_section)={k.dmap(k.mem_section_roots):x}",
            f"LENGTH(mem_section)={FK.NR_SECTION_ROOTS}",
            f"SIZE(mem_section)={D.MEM_SECTION_SIZE}",
            "OFFSET(mem_section.section_mem_map)=0",
            f"NUMBER(SECTION_SIZE_BITS)={FK.SECTION_BITS}" if six else None,
            f"NUMBER(MAX_PHYSMEM_BITS)={D.MAX_PHYSMEM_BITS_X86_64}" if six else None]
    out += _MM_LINES
    if k.prb:
        out += [f"SYMBOL(prb)={k.symbol('prb'):x}", f"SYMBOL(printk_rb_static)={k.symbol('printk_rb_static'):x}",
                f"SYMBOL(clear_seq)={k.symbol('clear_seq'):x}"] + _PRB_LINES
    else:
        out += [f"SYMBOL(log_buf)={k.symbol('log_buf'):x}", f"SYMBOL(log_buf_len)={k.symbol('log_buf_len'):x}",
                f"SYMBOL(log_first_idx)={k.symbol('log_first_idx'):x}",
                f"SYMBOL(clear_idx)={k.symbol('clear_idx'):x}",
                f"SYMBOL(log_next_idx)={k.symbol('log_next_idx'):x}"] + _PRINTK_LOG_LINES
    out += ["LENGTH(free_area.free_list)=5", "NUMBER(NR_FREE_PAGES)=0",
            f"NUMBER(PG_lru)={pg['lru']}", f"NUMBER(PG_private)={pg['private']}",
            f"NUMBER(PG_swapcache)={pg['swapcache']}", f"NUMBER(PG_swapbacked)={pg['swapbacked']}",
            f"NUMBER(PG_slab)={pg['slab']}", f"NUMBER(PG_hwpoison)={pg['hwpoison']}",
            f"NUMBER(PG_head_mask)={1 << pg['head']}",
            f"NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)={FK.PAGE_BUDDY_MAPCOUNT_VALUE}",
            "NUMBER(HUGETLB_PAGE_DTOR)=2"]
    if six:   # 5.0+
        out.append("NUMBER(PAGE_OFFLINE_MAPCOUNT_VALUE)=-257")
    out += [f"NUMBER(phys_base)={k.phys_base}", f"SYMBOL(init_top_pgt)={k.symbol('init_top_pgt'):x}",
            "NUMBER(pgtable_l5_enabled)=0",
            f"SYMBOL(node_data)={k.symbol('node_data'):x}", f"LENGTH(node_data)={FK.MAX_NUMNODES}",
            "KERNELOFFSET=0", f"NUMBER(KERNEL_IMAGE_SIZE)={D.KERNEL_IMAGE_SIZE_X86_64}",
            "NUMBER(sme_mask)=0" if six else None]    # SME mask export: after 4.18 (x86/kdump, Lianbo Jiang)
    return [line for line in out if line is not None]


def init_uts_ns_name(m: Machine) -> bytes:
    """init_uts_ns.name, a struct new_utsname (include/uapi/linux/utsname.h:
    six char[65]: sysname, nodename, release, version, machine, domainname),
    as init/version.c initialises it and userspace's sethostname leaves it.
    In 6.1 `name` is struct uts_namespace's first member (include/linux/utsname.h;
    the 6.1 sample's VMCOREINFO says OFFSET(uts_namespace.name)=0)."""
    release = m.kernel_structs.osrelease if m.kernel_structs is not None else D.OSRELEASE[m.era]
    fields = ("Linux", UTS_NODENAME, release, UTS_VERSION[m.era], UTS_MACHINE[m.arch], "(none)")
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
        m.memory.write(init_uts_ns_paddr(m), init_uts_ns_name(m), time, KERNEL)
        m.memory.write(m.vmcoreinfo_addr, vmcoreinfo_note(m, None), time, KERNEL)


def crash_save_vmcoreinfo(m: Machine, time: int, actor: str) -> int:
    """The panicking CPU adds CRASHTIME to the note (kernel/crash_core.c
    crash_save_vmcoreinfo); returns the note's address."""
    m.memory.write(m.vmcoreinfo_addr, vmcoreinfo_note(m, CRASHTIME_EPOCH), time, actor)
    return m.vmcoreinfo_addr
