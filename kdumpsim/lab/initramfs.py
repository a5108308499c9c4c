"""Build the lab's two initramfs images: a newc cpio archive, gzip-compressed.

Format: the "newc" cpio format the kernel unpacks (Documentation/driver-api/
early-userspace/buffer-format.rst: magic "070701", 13 eight-digit hex fields,
name and data padded to 4 bytes, archive ends with "TRAILER!!!"; init/
initramfs.c do_header/do_name).  The archive is written here in Python so it
is byte-reproducible (mtime 0, fixed inode numbers, sorted entries) and needs
no root for the /dev/console node.

Kernel modules are resolved by the `depends=` tag of each module's .modinfo
section (scripts/mod/modpost.c writes it), because the unpacked Debian
package has no modules.dep (depmod runs at install time).

The capture image holds busybox, /init (data/capture-init.sh), and the disk
and NIC modules.  The first image holds the same plus /init
(data/first-init.sh), the kernel as /boot/vmlinuz, the capture image as
/boot/capture.gz, /sbin/kexec with its shared libraries (from `ldd`), and the
panic helper.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import stat
import subprocess
from pathlib import Path

from . import LabError

# Module groups the /init scripts load by name (insmod in this order).
MODULE_GROUPS = {
    "e1000": ["e1000"],
    "virtio-net": ["virtio_pci", "virtio_net"],
    "virtio-blk": ["virtio_pci", "virtio_blk"],
    "ide": ["ata_piix", "ahci", "sd_mod"],
    "pvpanic": ["pvpanic-mmio"],
}


def _norm(name: str) -> str:
    return name.replace("-", "_")


class CpioWriter:
    """Accumulates newc entries and writes the archive."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[int, bytes, int, int]] = {}

    def _add(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        name = name.lstrip("/")
        parts = name.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent not in self._entries:
                self._entries[parent] = (stat.S_IFDIR | 0o755, b"", 0, 0)
        self._entries[name] = (mode, data, rdev[0], rdev[1])

    def dir(self, name: str) -> None:
        self._add(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._add(name, stat.S_IFREG | perm, data)

    def symlink(self, name: str, target: str) -> None:
        self._add(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int, perm: int = 0o600) -> None:
        self._add(name, stat.S_IFCHR | perm, b"", (major, minor))

    def to_bytes(self) -> bytes:
        out = io.BytesIO()

        def pad(n: int) -> None:
            out.write(b"\0" * ((4 - n % 4) % 4))

        def header(ino: int, mode: int, nlink: int, size: int, rmaj: int, rmin: int, namesize: int) -> None:
            fields = [ino, mode, 0, 0, nlink, 0, size, 0, 0, rmaj, rmin, namesize, 0]
            out.write(b"070701" + b"".join(b"%08X" % f for f in fields))

        ino = 1
        for name in sorted(self._entries):
            mode, data, rmaj, rmin = self._entries[name]
            nlink = 2 if stat.S_ISDIR(mode) else 1
            bname = name.encode() + b"\0"
            header(ino, mode, nlink, len(data), rmaj, rmin, len(bname))
            out.write(bname)
            pad(110 + len(bname))
            out.write(data)
            pad(len(data))
            ino += 1
        bname = b"TRAILER!!!\0"
        header(0, 0, 1, 0, 0, 0, len(bname))
        out.write(bname)
        pad(110 + len(bname))
        return out.getvalue()

    def gzip(self) -> bytes:
        return gzip.compress(self.to_bytes(), compresslevel=6, mtime=0)


def index_modules(moddir: Path) -> dict[str, Path]:
    """Map normalised module name -> .ko path under lib/modules/<ver>/kernel."""
    index: dict[str, Path] = {}
    for path in moddir.rglob("*.ko"):
        index[_norm(path.name[:-3])] = path
    if not index:
        raise LabError(f"no kernel modules (*.ko) under {moddir}")
    return index


def module_depends(path: Path) -> list[str]:
    """The `depends=` list from a module's .modinfo strings."""
    data = path.read_bytes()
    m = re.search(rb"\0depends=([^\0]*)\0", data)
    if not m or not m.group(1):
        return []
    return [_norm(d) for d in m.group(1).decode().split(",") if d]


def resolve_order(names: list[str], index: dict[str, Path]) -> list[str]:
    """Dependency-first order of the given modules and everything they need."""
    order: list[str] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        name = _norm(name)
        if name in seen:
            return
        if name in chain:
            raise LabError(f"module dependency cycle: {' -> '.join(chain + (name,))}")
        if name not in index:
            raise LabError(f"kernel module {name} not found in the guest kernel package")
        for dep in module_depends(index[name]):
            visit(dep, chain + (name,))
        seen.add(name)
        order.append(name)

    for n in names:
        visit(n, ())
    return order


def _add_modules(cpio: CpioWriter, index: dict[str, Path]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    added: set[str] = set()
    for group, names in MODULE_GROUPS.items():
        order = resolve_order(names, index)
        groups[group] = order
        for mod in order:
            if mod not in added:
                cpio.file(f"lib/lab/{mod}.ko", index[mod].read_bytes())
                added.add(mod)
        cpio.file(f"lib/lab/{group}.list", "".join(f"{m}.ko\n" for m in order).encode())
    return groups


def _base(cpio: CpioWriter, busybox: Path, init_script: bytes) -> None:
    for d in ("dev", "proc", "sys", "tmp", "bin", "sbin", "usr/bin", "usr/sbin", "boot", "lib/lab"):
        cpio.dir(d)
    cpio.chardev("dev/console", 5, 1)
    cpio.file("bin/busybox", busybox.read_bytes(), 0o755)
    cpio.symlink("bin/sh", "busybox")
    cpio.file("init", init_script, 0o755)
    cpio.file("lib/lab/common.sh", (Path(__file__).parent / "data" / "lab-common.sh").read_bytes(), 0o644)


def shared_libs(binary: Path) -> list[Path]:
    """Shared libraries of a dynamic binary, from `ldd` (glibc's ld.so --list)."""
    try:
        out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False).stdout
    except FileNotFoundError as exc:
        raise LabError("ldd not found (package libc-bin)") from exc
    libs = []
    for line in out.splitlines():
        m = re.search(r"(/\S+) \(0x", line)
        if m:
            libs.append(Path(m.group(1)))
    return libs


def build_capture(busybox: Path, moddir: Path, data_dir: Path) -> tuple[bytes, dict]:
    cpio = CpioWriter()
    _base(cpio, busybox, (data_dir / "capture-init.sh").read_bytes())
    groups = _add_modules(cpio, index_modules(moddir))
    return cpio.gzip(), groups


def build_first(busybox: Path, moddir: Path, data_dir: Path, vmlinuz: Path,
                capture_gz: bytes, kexec: Path, helper: Path) -> tuple[bytes, dict]:
    cpio = CpioWriter()
    _base(cpio, busybox, (data_dir / "first-init.sh").read_bytes())
    groups = _add_modules(cpio, index_modules(moddir))
    cpio.file("boot/vmlinuz", vmlinuz.read_bytes())
    cpio.file("boot/capture.gz", capture_gz)
    cpio.file("sbin/kexec", kexec.read_bytes(), 0o755)
    for lib in shared_libs(kexec):
        cpio.file(str(lib), Path(os.path.realpath(lib)).read_bytes(), 0o755)
    cpio.file("bin/panic-helper", helper.read_bytes(), 0o755)
    return cpio.gzip(), groups
