"""`kdumpsim import`: a model file from a real machine (kdumpsim.importer)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

EPILOG = """examples:
  sudo kdumpsim import -o my-host.yaml          # this machine (root: /proc/iomem shows addresses only to root)
  kdumpsim import --root saved-tree -o other.yaml   # a machine you are not on: its proc/ and sys/ copied under DIR
  kdumpsim import --kdump-log capture-console.txt -o my-host.yaml   # capture timing from a capture kernel's log
  kdumpsim validate my-host.yaml && kdumpsim run my-host.yaml --fail-on failed

Every imported value carries a comment naming the file it came from; PCI
devices no device kind fits are listed as comments, not guessed. The report
(stderr) says where the kernel is and the crash kernel reservation.
Exit status 0: written and the model validates; 1: written, but it does not
lay out (the reason is printed); 2: the tree cannot be read.
"""


def register(sub: Any) -> None:
    sp = sub.add_parser("import", help="make a model file from this machine or a saved /proc + /sys tree",
                        description="Read /proc/iomem, /proc/cmdline, /sys (CPUs, NUMA nodes, PCI devices, "
                                    "IOMMUs, kexec_crash_*) and write a model YAML.",
                        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sp.add_argument("--root", default="/", metavar="DIR", help="read DIR/proc and DIR/sys instead of the host's")
    sp.add_argument("-o", "--output", metavar="FILE", help="write the model here (atomically) instead of stdout")
    sp.add_argument("--name", help="model name (default: the machine's hostname)")
    sp.add_argument("--arch", choices=("x86_64", "i386"), default="x86_64",
                    help="architecture (not read from the tree; default x86_64)")
    sp.add_argument("--kdump-log", metavar="FILE",
                    help="a capture kernel's console or dmesg: sets the capture timing (boot, vmcore and IOMMU "
                         "init, each device's driver probe)")
    sp.add_argument("--kdump-kernel", metavar="FILE",
                    help="the vmlinuz kexec -p loads (default: where kdump-tools or kdumpctl keep it under --root)")
    sp.add_argument("--kdump-initrd", metavar="FILE",
                    help="the initrd kexec -p loads (default: /var/lib/kdump/initrd.img or "
                         "/boot/initramfs-RELEASEkdump.img under --root)")
    sp.add_argument("--quiet", action="store_true", help="no report on stderr")
    sp.set_defaults(func=cmd_import)


def cmd_import(args: argparse.Namespace) -> int:
    from pathlib import Path

    from kdumpsim.errors import UsageError
    from kdumpsim.importer.host import check, import_tree
    if not Path(args.root).is_dir():
        raise UsageError(f"--root {args.root}: not a directory (expected one holding proc/ and sys/)")
    imported = import_tree(args.root, name=args.name, arch=args.arch, kdump_log=args.kdump_log,
                           kdump_kernel=args.kdump_kernel, kdump_initrd=args.kdump_initrd)
    if args.output:
        from kdumpsim.atomic import write_text
        write_text(args.output, imported.yaml_text)
    else:
        sys.stdout.write(imported.yaml_text)
    problem = check(imported, args.output or "<stdout>")
    if not args.quiet:
        err = sys.stderr
        k, c = imported.kernel, imported.crash_kernel
        where = f"{k[0]:#x}-{k[1]:#x} (/proc/iomem Kernel code .. Kernel bss)" if k else "not in /proc/iomem"
        print(f"kernel       {where} -> kernel.image", file=err)
        reserved = (f"{c[0]:#x}-{c[1]:#x} ({(c[1] - c[0] + 1) >> 20} MiB, /proc/iomem Crash kernel)" if c
                    else "none on this machine")
        print(f"reservation  {reserved} -> crashkernel={imported.raw['kexec']['crashkernel']}", file=err)
        kx = imported.raw["kexec"]
        print("kdump files  " + ", ".join(f"{k} {kx[k]}" for k in ("capture_kernel_size", "capture_kernel_init_size",
                                                                   "initrd_size") if k in kx)
              if "initrd_size" in kx or "capture_kernel_size" in kx
              else "kdump files  not found (the initrd decides most of the capture kernel's need: --kdump-initrd)",
              file=err)
        print(f"devices      {len(imported.raw['devices'])} imported, {len(imported.unclassified)} unclassified "
              "(listed as comments)", file=err)
        if "timing" in imported.raw:
            print("timing       " + ", ".join(f"{k} {v}" for k, v in imported.raw["timing"].items())
                  + f" (from {args.kdump_log})", file=err)
            for n in imported.notes:
                if n.startswith(str(args.kdump_log)):
                    print(f"  note: {n}", file=err)
        for u in imported.unclassified:
            print(f"  unclassified {u}", file=err)
        if args.output:
            print(f"wrote {args.output}", file=err)
    if problem:
        print(f"kdumpsim: the imported model does not lay out: {problem}", file=sys.stderr)
        return 1
    return 0
