"""Every default value of the model, in one place, each with its source.

"(assumption)" marks a value no source gave; the README's model section lists
them. Config fields (kdumpsim.config) take their defaults from here and the
model code never hard-codes a figure of its own.
"""

from __future__ import annotations

from kdumpsim.units import GiB, KiB, MiB

PAGE_SIZE = 4096  # x86 base page (arch/x86/include/asm/page_types.h PAGE_SHIFT 12)

# --- Crash shutdown (arch/x86/kernel/reboot.c nmi_shootdown_cpus; 2005:
# arch/i386/kernel/crash.c nmi_shootdown_cpus): the panicking CPU waits for the
# others with `msecs = 1000; while (atomic_read(&waiting_for_crash_ipi) > 0 &&
# msecs) { mdelay(1); msecs--; }`.
NMI_SHOOTDOWN_TIMEOUT = "1000ms"
NMI_SHOOTDOWN_POLL = "1ms"
# NMI IPI delivery per APIC-bus hop: ~2-3 us on the P6 APIC bus (LKML 2001),
# ~1-3 us on xAPIC/x2APIC (docs/SOURCES.md §10).
APIC_BUS_LATENCY_2005 = "2us"
APIC_BUS_LATENCY_MODERN = "1us"
# Crossing between sockets (QPI/UPI hop) (assumption).
SOCKET_LINK_LATENCY = "500ns"
# crash_save_cpu + disable_local_APIC + halt in the NMI handler (assumption, docs/SOURCES.md §10).
CRASH_SAVE_CPU = "5us"
LAPIC_SHUTDOWN = "2us"      # (assumption)
IOAPIC_DISABLE = "20us"     # clear_IO_APIC walks every pin (assumption)
HPET_DISABLE = "2us"        # modern kernels only (assumption)
MACHINE_KEXEC = "50us"      # control page setup, jump to purgatory (assumption)

# --- Purgatory (kexec-tools purgatory/purgatory.c verify_sha256_digest;
# purgatory/arch/i386/crashdump_backup.c).
# ~270 MB/s measured for an -O2 purgatory (2022 patch, docs/SOURCES.md §10); purgatory was
# built -O0 until 2016 (kexec-tools 0a7fba8): 2005-era rate (assumption: 5x slower).
PURGATORY_SHA256_RATE_MODERN = "270MB/s"
PURGATORY_SHA256_RATE_2005 = "54MB/s"
PURGATORY_HASH_CHUNK = 256 * KiB  # RAM is read per 256 KiB (~1 ms at 270 MB/s) while hashing
BACKUP_COPY_RATE = "1GB/s"        # memcpy in purgatory (assumption)
BACKUP_SIZE_2005 = 640 * KiB      # first 640 KiB (paper 4.3)
BACKUP_SIZE_2004 = 16 * MiB       # first 16 MB (paper 2.2)
BACKUP_ALIGN = 1 * KiB            # kexec-tools load_crashdump_segments: align = 1024

# --- Capture kernel boot, counted from the jump, in the kernel's initcall order
# (docs/SOURCES.md §10, §11): vmcore_init is an fs_initcall and runs before
# pci_iommu_init (rootfs_initcall), which runs before the drivers; the NIC and
# disk drivers of a kdump initramfs are modules that udev loads after /init.
# Anchor: published Fedora/FCOS boot logs start the capture service 4.6-6.5 s
# into the capture kernel; the split inside that is an assumption. (The lab's
# QEMU TCG profile, kdumpsim/lab/data/qemu-tcg-profile.yaml, is measured.)
VMCORE_INIT_AT = "0.5s"           # fs_initcall vmcore_init (assumption)
CAPTURE_IOMMU_INIT = "0.6s"       # rootfs_initcall pci_iommu_init (assumption)
CAPTURE_DRIVER_INIT = "3s"        # initramfs modules probe (assumption)
CAPTURE_BOOT = "4.5s"             # the dump service starts (assumption, in the published range)
# populate_rootfs unpacking the initrd (rate of its compressed bytes; assumption for
# hardware; the lab's TCG capture kernel: 1763109 bytes in 0.141 s, docs/SOURCES.md §13).
INITRAMFS_UNPACK_RATE = "100MB/s"
# Copy failed: translation is off from init_dmars until intel_iommu_init re-enables it with
# fresh tables (drivers/iommu/intel/iommu.c): how long that takes (assumption).
IOMMU_FRESH_TABLES = "1ms"
# IOVA space (drivers/iommu/dma-iommu.c, iova.c): PCI devices get IOVAs below 4 GiB first,
# top-down, 4 KiB granule; the MSI window is reserved (intel/iommu.c IOAPIC_RANGE_START/END).
IOVA_SAC_LIMIT = 1 << 32
IOVA_MSI_WINDOW = (0xFEE0_0000, 0xFEF0_0000)
# CMA crashkernel (kernel/crash_core.c crash_cma_clear_pending_dma): CMA_DMA_TIMEOUT_SEC.
# panic()'s console output before kdump: the real 6.1 sysrq panic (shared sample's
# dmesg-kexec_file.txt, docs/SOURCES.md §5) is 44 lines, 2449 bytes with timestamps.
PANIC_CONSOLE_BYTES = 2449
SWIOTLB_DEFAULT_SIZE = 64 * MiB   # include/linux/swiotlb.h IO_TLB_DEFAULT_SIZE
CMA_DMA_WAIT = "10s"
CMA_ALIGN = 4 * MiB               # CMA areas are pageblock/MAX_ORDER aligned (assumption: 4 MiB)
DUMP_START_DELAY = "0.5s"         # the dump service until the copy reads /proc/vmcore (assumption)
# Disk-bound copy of /proc/vmcore (assumption); reading it alone is ~50 GB/s with
# mmap (Hatayama 2013: 2 TB in 40 s), the disk is the bottleneck.
DUMP_THROUGHPUT_2005 = "50MB/s"
DUMP_THROUGHPUT_MODERN = "500MB/s"

# --- kexec load (kexec-tools kexec/arch/i386/crashdump-x86.c).
ELFCOREHDR_MIN_MEMSZ = 16 * KiB   # "bloat the memsz of elf core header segment to 16K"
ELFCOREHDR_ALIGN = 1 * KiB
KEXEC_SEGMENT_MAX = 16            # include/uapi/linux/kexec.h
MEMMAP_MIN_RANGE = 100 * KiB      # cmdline_add_memmap skips ranges < 100K (docs/SOURCES.md)
# crashkernel=X automatic placement (arch/x86/kernel/setup.c reserve_crashkernel):
CRASH_ALIGN = 16 * MiB            # CRASH_ALIGN SZ_16M
CRASH_ADDR_LOW_MAX_X86_64 = 4 * GiB   # tried first (below 4G)
CRASH_ADDR_HIGH_MAX_X86_64 = 64 * 1024 * GiB   # 64 TiB
CRASH_ADDR_MAX_I386 = 512 * MiB
KEXEC_LOAD_TIME = "-1s"           # kexec -p ran at boot; only "before the panic" matters

# Capture kernel images (assumption, sizes typical of each era).
CAPTURE_KERNEL_SIZE_2005 = 4 * MiB    # a 2.6.12 vmlinux
# Debian's linux-image-6.1.0-56-amd64 (6.1.192-2) vmlinuz, read with
# kdumpsim.formats.bzimage: 0x7dd200 bytes, of which 0x7d8200 are the
# protected-mode kernel kexec loads (bufsz) into a segment of init_size
# 0x3f98000 (63.6 MiB, memsz), 2 MiB aligned (docs/SOURCES.md §1).
CAPTURE_KERNEL_SIZE_MODERN = 0x7D8200
CAPTURE_KERNEL_INIT_SIZE_MODERN = 0x3F98000
CAPTURE_KERNEL_ALIGN_MODERN = 2 * MiB
INITRD_SIZE_2005 = 2 * MiB
INITRD_SIZE_MODERN = 28 * MiB          # kdump initramfs (docs/SOURCES.md §10)
PURGATORY_SIZE = 16 * KiB
PARAMS_SIZE = 16 * KiB                 # parameter block: zero page + command line (KT 2005: 16 KiB)
# --- kexec_file_load (the kernel lays out the segments; docs/SOURCES.md §12).
KEXEC_FILE_MIN_PURGATORY_ADDR = 0x3000        # arch/x86/kernel/kexec-bzimage64.c MIN_PURGATORY_ADDR
KEXEC_FILE_MIN_BOOTPARAM_ADDR = 0x3000        # MIN_BOOTPARAM_ADDR
KEXEC_FILE_MIN_KERNEL_LOAD_ADDR = 1 * MiB     # MIN_KERNEL_LOAD_ADDR
KEXEC_FILE_MIN_INITRD_LOAD_ADDR = 16 * MiB    # MIN_INITRD_LOAD_ADDR
KEXEC_FILE_ELF_CORE_HEADER_ALIGN = 4096       # include/linux/kexec.h ELF_CORE_HEADER_ALIGN
MAX_ELFCOREHDR_STR_LEN = 30                   # "elfcorehdr=0x<64bit-value> "
CMDLINE_SIZE_X86 = 2048                       # setup header cmdline_size (COMMAND_LINE_SIZE, boot protocol 2.06+)
BOOT_PARAMS_SIZE = 4096                       # sizeof(struct boot_params)
SETUP_DATA_HDR = 16                           # sizeof(struct setup_data): next, type, len
EFI_SETUP_DATA_SIZE = 96                      # sizeof(struct efi_setup_data): 4 u64 + reserved[8]
RNG_SEED_LENGTH = 32                          # the SETUP_RNG_SEED setup_data payload
VMCOREINFO_NOTE_SIZE = 12 * 2 + 12 + 4096     # include/linux/crash_core.h (docs/SOURCES.md §8)
# CONFIG_CRASH_HOTPLUG (6.6+) sizes the elfcorehdr segment for 2 + NR_CPUS_DEFAULT +
# CRASH_MAX_MEMORY_RANGES program headers: 8192 with MAXSMP (Fedora/RHEL configs;
# assumption for others) and the Kconfig default 8192.
NR_CPUS_DEFAULT = 8192
CRASH_MAX_MEMORY_RANGES = 8192
LOW_1M = 1 * MiB                              # left out of kexec_file's ELF headers (5.8+)
CMDLINE_2005 = "root=/dev/sda1 maxcpus=1 init 1"          # paper section 5, step 6
CMDLINE_MODERN = "irqpoll nr_cpus=1 reset_devices"         # distro kdump defaults (Fedora kdump.sysconfig)

# --- First kernel layout.
# crash_notes: 2005 static `note_buf_t crash_notes[NR_CPUS]`, 1 KiB each (paper 3.3);
# modern: per-cpu buffer, size in /sys/devices/system/cpu/cpuN/crash_notes_size.
CRASH_NOTE_BYTES = 1 * KiB
# Modern note_buf_t: 2 note headers + "CORE" + elf_prstatus (include/linux/crash_core.h
# CRASH_CORE_NOTE_BYTES), exported as crash_notes_size; docs/SOURCES.md §9.
CRASH_NOTE_BYTES_MODERN = {"x86_64": 2 * 12 + 8 + 336, "i386": 2 * 12 + 8 + 144}
KERNEL_PHYS_START_I386 = 1 * MiB       # i386 default load address (paper 3)
KERNEL_PHYS_START_X86_64 = 16 * MiB    # CONFIG_PHYSICAL_START=0x1000000
KERNEL_TEXT_SIZE_X86_64 = 32 * MiB     # kernel-text PT_LOAD size (assumption; 52 MiB in the 6.1 sample)
PAGE_OFFSET = {  # direct map base (docs/SOURCES.md §3)
    ("i386", "2005"): 0xC000_0000,
    ("i386", "modern"): 0xC000_0000,
    ("x86_64", "modern"): 0xFFFF_8880_0000_0000,
}
I386_LOWMEM_LIMIT = 896 * MiB            # above this i386 has no direct-map vaddr
START_KERNEL_MAP = 0xFFFF_FFFF_8000_0000  # x86_64 __START_KERNEL_map
OSRELEASE = {"2005": "2.6.13", "modern": "6.1.0-kdumpsim"}

# --- Devices (docs/SOURCES.md §11; Linux 6.1.192 drivers).
# e1000: drivers/net/ethernet/intel/e1000/ e1000.h E1000_DEFAULT_RXD; e1000_sw_init
# rx_buffer_len = MAXIMUM_ETHERNET_VLAN_SIZE at MTU 1500; e1000_frag_len: the
# page_frag slice = SKB_DATA_ALIGN(1522 + NET_SKB_PAD 64) + SKB_DATA_ALIGN(skb_shared_info 320);
# the device writes at E1000_HEADROOM (64) into the slice. e1000_configure posts
# E1000_DESC_UNUSED = N-1 buffers and writes RDT one short: the hardware owns N-2.
E1000_RX_DESCRIPTORS = 256
E1000_RX_BUFFER_LEN = 1522
E1000_FRAG_SIZE = 1920
E1000_HEADROOM = 64
SKB_SHARED_INFO = 320       # SKB_DATA_ALIGN(sizeof(struct skb_shared_info)), 6.1 x86_64
E1000_HW_OWNED_SHORT = 2
RX_DESCRIPTOR_BYTES = 16     # struct e1000_rx_desc; write-back fills its second 8 bytes
# page_frag cache (include/linux/mm_types.h PAGE_FRAG_CACHE_MAX_SIZE, mm/page_alloc.c
# __page_frag_cache_refill): 32 KiB order-3 blocks, slices handed out from the top (6.1).
PAGE_FRAG_BLOCK = 32 * KiB
# virtio-net (drivers/net/virtio_net.c): QEMU rx_queue_size 256; mergeable buffers
# hdr 12 + GOOD_PACKET_LEN 1518 aligned to 64 = 1536, carved bottom-up from 32 KiB
# skb_page_frag_refill blocks; refill only when more than 32 are free (virtnet_receive),
# so N-32..N are posted. The used ring element is 8 bytes (id, len).
VIRTIO_QUEUE_SIZE = 256
VIRTIO_RX_BUFFER = 1536
VIRTIO_REFILL_THRESHOLD = 32
VIRTIO_USED_ELEM_BYTES = 8
# NVMe (drivers/nvme/host/pci.c): 16-byte completion entries; io_queue_depth 1024;
# HMB up to max_host_mem_size_mb 128 in chunks of at most 4 MiB (nvme_alloc_host_mem).
NVME_CQE_BYTES = 16
NVME_HMB_CHUNK = 4 * MiB
# Completion latency of a command in flight: lognormal with this median and 99.9th
# percentile. Secondary sources only (docs/SOURCES.md §11: 50-100 us reads at QD1;
# tails of ms under mixed load) (assumption).
NVME_LATENCY_MEDIAN = "80us"
NVME_LATENCY_P999 = "5ms"
# What the controller writes into its HMB until it is reset: 4 KiB every 1 ms (assumption).
NVME_HMB_WRITE = 4 * KiB
NVME_HMB_PERIOD = "1ms"
PCI_BANDWIDTH = "133MB/s"    # 32-bit 33 MHz PCI
PCIE_X4_BANDWIDTH = "1GB/s"  # PCIe 1.0: 250 MB/s per lane
PCI_LATENCY = "1us"          # bridge crossing (assumption)
MEMORY_BANDWIDTH = "10GB/s"  # memory controller (assumption)

# --- First-kernel structures the crash tools read (issue #8; x86_64, modern era).
KERNEL_VERSION_MODERN = "6.1"            # the era's kernel when kernel.version is not given
OSRELEASE_BY_VERSION = {"6.1": "6.1.0-kdumpsim", "6.6": "6.6.0-kdumpsim", "4.18": "4.18.0-kdumpsim"}
# Uptime of the first kernel at the panic: printk timestamps count from boot (assumption).
UPTIME_AT_PANIC = "600s"
# SPARSEMEM on x86_64 (arch/x86/include/asm/sparsemem.h): 128 MiB sections,
# MAX_PHYSMEM_BITS 46 with 4-level paging (the 6.1 sample's 52 is 5-level).
SECTION_SIZE_BITS_X86_64 = 27
MAX_PHYSMEM_BITS_X86_64 = 46
STRUCT_PAGE_SIZE = 64                     # SIZE(page)=64 in the 6.1 sample
MEM_SECTION_SIZE = 32                     # SIZE(mem_section)=32 in the 6.1 sample
VMEMMAP_START_X86_64 = 0xFFFF_EA00_0000_0000   # Documentation/x86/x86_64/mm.rst, 4-level, no KASLR
KERNEL_IMAGE_SIZE_X86_64 = 512 * MiB     # arch/x86/include/asm/page_64_types.h, !CONFIG_RANDOMIZE_BASE
# printk: Debian's CONFIG_LOG_BUF_SHIFT=17 (a 128 KiB static __log_buf); the
# lockless ring has one descriptor per 2^PRB_AVGBITS (5) text bytes
# (kernel/printk/printk.c PRB_AVGBITS).
LOG_BUF_SHIFT = 17
PRB_AVGBITS = 5
# How the first kernel uses its RAM at the panic, as fractions of the pages it
# does not reserve (struct page says which; makedumpfile -d 31 drops all but
# "kernel"). A busy server with a warm page cache (assumption).
PAGE_USE = {"free": 0.35, "cache": 0.25, "cache_private": 0.05, "user": 0.20, "zero": 0.03, "kernel": 0.12}
