"""The x86 boot protocol's setup header of a bzImage (vmlinuz): what kexec
loads and how much memory the kernel needs to run (docs/SOURCES.md §1).

Documentation/x86/boot.rst: the header starts at 0x1f1; "HdrS" at 0x202,
the protocol version at 0x206; setup_sects at 0x1f1 (0 means 4); the
protected-mode kernel follows the (setup_sects + 1) * 512 bytes of setup
code; kernel_alignment at 0x230; init_size at 0x260 (protocol 2.10+), the
memory the kernel needs from its load address until it has decompressed
and relocated itself. kexec-tools' bzImage64 loader puts the protected-mode
part in one segment of memsz _ALIGN(init_size, 4096)
(kexec/arch/i386/kexec-bzImage64.c); the kernel's kexec_file does the same
(PAGE_ALIGN(header->init_size)).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

HDRS = b"HdrS"
MIN_PROTOCOL = 0x20A            # init_size came with boot protocol 2.10
HEADER_END = 0x268


class BzImageError(ValueError):
    """Not a bzImage this loader can take; the message names the offset."""


@dataclass(frozen=True)
class BzImage:
    file_size: int
    setup_size: int          # real-mode setup code, not loaded into the reservation
    payload_size: int        # the protected-mode kernel: the kernel segment's bufsz
    init_size: int           # the kernel segment's memsz (before page alignment)
    kernel_alignment: int
    protocol: int


def read_bzimage(path: str | os.PathLike) -> BzImage:
    with open(path, "rb") as fh:
        head = fh.read(HEADER_END)
        size = os.fstat(fh.fileno()).st_size
    if len(head) < HEADER_END:
        raise BzImageError(f"offset {len(head):#x}: file ends inside the setup header ({size} bytes)")
    if head[0x202:0x206] != HDRS:
        raise BzImageError("offset 0x202: no 'HdrS' magic: not a bzImage (vmlinuz)")
    protocol = struct.unpack_from("<H", head, 0x206)[0]
    if protocol < MIN_PROTOCOL:
        raise BzImageError(f"offset 0x206: boot protocol {protocol >> 8}.{protocol & 0xff} has no init_size "
                           "(needs 2.10 or later)")
    setup = ((head[0x1F1] or 4) + 1) * 512
    if setup >= size:
        raise BzImageError(f"offset 0x1f1: {setup} bytes of setup code but the file has {size}")
    init_size = struct.unpack_from("<I", head, 0x260)[0]
    payload = size - setup
    if init_size < payload:
        raise BzImageError(f"offset 0x260: init_size {init_size:#x} is smaller than the kernel ({payload:#x})")
    return BzImage(size, setup, payload, init_size, struct.unpack_from("<I", head, 0x230)[0], protocol)
