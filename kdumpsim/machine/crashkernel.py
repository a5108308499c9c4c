"""crashkernel=: parsing the option and placing the reservation, as the
kernel does (kernel/crash_core.c parse_crashkernel, parse_crashkernel_mem;
arch/x86/kernel/setup.c reserve_crashkernel; docs/SOURCES.md §crashkernel).

The reservation is taken from memblock at boot, before the page allocator
exists, so no first-kernel allocation (a driver's DMA buffer included) can
ever land in it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from kdumpsim import defaults as D
from kdumpsim.errors import LayoutError
from kdumpsim.formats.bzimage import BzImage, BzImageError, read_bzimage
from kdumpsim.machine.ranges import FreeRanges
from kdumpsim.units import MiB, fmt_size, parse_size

if TYPE_CHECKING:
    from kdumpsim.config.model import ModelConfig
    from kdumpsim.machine.layout import Machine


@dataclass(frozen=True)
class Reservation:
    start: int
    end: int          # exclusive
    spec: str         # the crashkernel= text
    automatic: bool   # placed by the kernel (crashkernel=X) rather than X@Y
    low: tuple[int, int] | None = None    # the low region kept below 4 GiB when the main one is above

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def spans(self) -> list[tuple[int, int]]:
        """Every range reserved for the capture kernel: its RAM, left out of the dump."""
        return [(self.start, self.end)] + ([self.low] if self.low else [])

    def overlaps(self, start: int, end: int) -> bool:
        return any(s < end and start < e for s, e in self.spans)



# ------------------------------------------------------------------ crashkernel=
def parse_crashkernel(spec: str, ram_total: int) -> tuple[int, int | None]:
    """`X@Y`, `X`, `X,high` or `A-B:X,C-:Y[@Y]` -> (size, base or None for automatic).

    The range form picks the size for this much System RAM, as
    kernel/crash_core.c parse_crashkernel_mem does.
    """
    text = spec.strip()
    if not text:
        raise LayoutError("kexec.crashkernel", "crashkernel is empty; use e.g. 32M@16M (size@base) or 256M")
    base: int | None = None
    if "@" in text:
        text, _, at = text.rpartition("@")
        base = _size("kexec.crashkernel", at, spec, "base")
    if text.endswith(",low"):
        raise LayoutError("kexec.crashkernel", f"{spec!r}: ,low sizes the low region of a ,high reservation; "
                          "give it as kexec.crashkernel_low")
    text = text.removesuffix(",high")
    if ":" in text:
        size = _range_size(text, spec, ram_total)
    else:
        size = _size("kexec.crashkernel", text, spec, "size")
    if size <= 0:
        raise LayoutError("kexec.crashkernel", f"size must be positive in {spec!r}; use e.g. 32M@16M")
    return size, base


def _range_size(text: str, spec: str, ram_total: int) -> int:
    """The size `start-[end]:size,...` gives for `ram_total` bytes of System RAM,
    as kernel/crash_core.c parse_crashkernel_mem: System RAM rounded up to
    128 MiB; entries are read in order and the FIRST whose start <= RAM < end
    wins (later ones are not read); `end <= start` and `size >= RAM` refuse the
    whole option."""
    total = -(-ram_total // (128 * MiB)) * (128 * MiB)
    for item in text.split(","):
        rng, sep, amount = item.partition(":")
        lo, dash, hi = rng.partition("-")
        if not (sep and dash):
            raise LayoutError("kexec.crashkernel", f"cannot parse range {item!r} in {spec!r}; "
                              "the range form is e.g. 512M-2G:64M,2G-:128M")
        lo_b = _size("kexec.crashkernel", lo, spec, "range start")
        hi_b = _size("kexec.crashkernel", hi, spec, "range end") if hi.strip() else 1 << 64
        if hi.strip() and hi_b <= lo_b:
            raise LayoutError("kexec.crashkernel", f"range {item!r} in {spec!r} ends where or before it starts "
                              "(the kernel refuses it: 'crashkernel: end <= start')")
        size = _size("kexec.crashkernel", amount, spec, "size")
        if size >= total:
            raise LayoutError("kexec.crashkernel", f"size {amount.strip()} in {spec!r} is not below the "
                              f"{total / MiB:.0f} MiB of System RAM (rounded up to 128 MiB) "
                              "(the kernel refuses it: 'crashkernel: invalid size')")
        if lo_b <= total < hi_b:
            if size == 0:
                raise LayoutError("kexec.crashkernel", f"{spec!r}: range {rng.strip()!r}, the first that covers "
                                  f"{ram_total / MiB:.1f} MiB of System RAM, gives size 0 (the kernel "
                                  "reserves nothing: 'crashkernel size resulted in zero bytes'); give a size")
            return size
    raise LayoutError("kexec.crashkernel", f"{spec!r} reserves nothing for {ram_total / MiB:.1f} MiB of "
                      "System RAM: no range covers it; add one, e.g. ...,0-:64M")


def _size(field_: str, text: str, spec: str = "", what: str = "size") -> int:
    try:
        return parse_size(text)
    except ValueError as e:
        where = f"crashkernel={spec}: {what}: " if spec else ""
        raise LayoutError(field_, f"{where}{e}") from None


def _suggest(machine: Machine, size: int) -> str:
    """A size@base that would work here: the lowest 16 MiB- (else 1 MiB-) aligned RAM clear of the kernel."""
    for align in (D.CRASH_ALIGN, MiB):
        free = FreeRanges(list(machine.ram_ranges))
        free.remove(*machine.kernel_image)
        start = free.alloc(size, align, lo=align)
        if start is not None:
            return f"; use e.g. crashkernel={fmt_size(size)}@{fmt_size(start)}"
    return f"; no System RAM range has {fmt_size(size)} free, use a smaller size"


def _what_is_at(machine: Machine, start: int, end: int) -> str:
    """What keeps [start, end) from being one System RAM range, for the message."""
    why = []
    last = max(e for _, e in machine.ram_ranges)
    if end > last:
        why.append(f"runs past the end of System RAM at {last - 1:#x} ({machine.ram_total / MiB:.1f} MiB in all)")
    hit = next((r for r in machine.cfg.memory.iomem if r.type != "System RAM" and r.start < end and start <= r.end), None)
    if hit is not None:
        why.append(f"overlaps '{hit.start:08x}-{hit.end:08x} : {hit.type}'")
    return "it " + (" and ".join(why) or "crosses a hole between System RAM ranges")


def reserve_crashkernel(machine: Machine) -> Reservation:
    """Place the reservation as the kernel does, or explain why it cannot;
    then check that what kexec must load fits in it."""
    reservation = _place(machine)
    check_segments_fit(machine.cfg, reservation.size)
    return reservation


def _place(machine: Machine) -> Reservation:
    spec = machine.cfg.kexec.crashkernel
    size, base = parse_crashkernel(spec, machine.ram_total)
    high = spec.strip().split("@")[0].endswith(",high")
    if high and (base is not None or machine.arch != "x86_64"):
        raise LayoutError("kexec.crashkernel", f"{spec!r}: ,high is for an automatic x86_64 reservation "
                          "(crashkernel=SIZE,high)")
    if base is not None:
        # reserve_crashkernel: memblock_phys_alloc_range(size, SZ_1M, base, base + size)
        if base % MiB:
            raise LayoutError("kexec.crashkernel", f"base {base:#x} is not a multiple of 1 MiB "
                              f"(crashkernel reservation failed - memory is in use){_suggest(machine, size)}")
        start, end = base, base + size
        if machine.ram_range_of(start, end) is None:
            raise LayoutError("kexec.crashkernel", f"crashkernel={spec} ({start:#x}-{end - 1:#x}) "
                              f"is not inside one System RAM range: {_what_is_at(machine, start, end)}"
                              f"{_suggest(machine, size)}")
        if machine.overlaps_kernel(start, end):
            ks, ke = machine.kernel_image
            raise LayoutError("kexec.crashkernel", f"{start:#x}-{end - 1:#x} overlaps the running kernel at "
                              f"{ks:#x}-{ke - 1:#x} (crashkernel reservation failed - memory is in use)"
                              f"{_suggest(machine, size)}")
        return Reservation(start, end, spec, automatic=False)
    if machine.era == "2005":
        raise LayoutError("kexec.crashkernel", f"{spec!r}: 2.6.13 takes only crashkernel=size@base"
                          f"{_suggest(machine, size)}")
    # Automatic: memblock top-down, CRASH_ALIGN (16 MiB), below 4 GiB first on
    # x86_64 (then up to 64 TiB), below 512 MiB on i386.
    free = FreeRanges(list(machine.ram_ranges))
    free.remove(*machine.kernel_image)
    limits = ([D.CRASH_ADDR_LOW_MAX_X86_64, D.CRASH_ADDR_HIGH_MAX_X86_64]
              if machine.arch == "x86_64" else [D.CRASH_ADDR_MAX_I386])
    if high:
        limits = limits[1:]                       # ",high": straight to high memory
    for hi in limits:
        start = free.alloc(size, D.CRASH_ALIGN, top_down=True, lo=D.CRASH_ALIGN, hi=hi)
        if start is not None:
            low = _reserve_low(machine, free) if start >= D.CRASH_ADDR_LOW_MAX_X86_64 else None
            return Reservation(start, start + size, spec, automatic=True, low=low)
    largest = max((e - s for s, e in free.ranges), default=0)
    raise LayoutError("kexec.crashkernel", f"no {fmt_size(size)} of System RAM, 16 MiB aligned, below "
                      f"{fmt_size(limits[-1])} for crashkernel={spec} "
                      "(crashkernel reservation failed - No suitable area found.); the largest free System RAM "
                      f"range is {largest / MiB:.1f} MiB, ask for less")


def _reserve_low(machine: Machine, free: FreeRanges) -> tuple[int, int]:
    """reserve_crashkernel_low (arch/x86/kernel/setup.c, 6.1): a reservation above
    4 GiB keeps a low one for the capture kernel's swiotlb and DMA32 allocations:
    crashkernel=Y,low, or max(swiotlb_size_or_default() + 8M, 256M), 16 MiB
    aligned, top-down below 4 GiB (docs/SOURCES.md §6)."""
    given = machine.cfg.kexec.crashkernel_low
    size = given if given is not None else max(D.SWIOTLB_DEFAULT_SIZE + 8 * MiB, 256 * MiB)
    start = free.alloc(size, D.CRASH_ALIGN, top_down=True, lo=0, hi=D.CRASH_ADDR_LOW_MAX_X86_64)
    if start is None:
        raise LayoutError("kexec.crashkernel", f"no {fmt_size(size)} below 4 GiB for the low region a reservation "
                          "above 4 GiB needs (crashkernel low memory reservation failed); set kexec.crashkernel_low")
    return (start, start + size)


@dataclass(frozen=True)
class KernelImage:
    """The capture kernel as kexec loads it: `size` bytes into a segment of `memsz`."""
    size: int
    memsz: int
    align: int
    source: str            # where the sizes come from


@lru_cache(maxsize=16)
def _read_image(path: str) -> BzImage:
    try:
        return read_bzimage(path)
    except OSError as e:
        raise LayoutError("kexec.capture_kernel_image", f"{path}: {e.strerror or e}") from None
    except BzImageError as e:
        raise LayoutError("kexec.capture_kernel_image", f"{path}: {e}") from None


def capture_kernel_image(m: ModelConfig) -> KernelImage:
    """The kernel segment's sizes: from a real vmlinuz's setup header, or the model's."""
    k = m.kexec
    if k.capture_kernel_image is not None:
        bz = _read_image(k.capture_kernel_image)
        return KernelImage(bz.payload_size, bz.init_size, max(bz.kernel_alignment, D.PAGE_SIZE), k.capture_kernel_image)
    assert k.capture_kernel_size is not None and k.capture_kernel_init_size is not None
    align = D.CAPTURE_KERNEL_ALIGN_MODERN if m.era == "modern" else D.PAGE_SIZE
    return KernelImage(k.capture_kernel_size, max(k.capture_kernel_init_size, k.capture_kernel_size), align, "model")


def check_segments_fit(m: ModelConfig, size: int) -> None:
    """The capture kernel (its memsz: init_size for a bzImage) and initrd must
    fit the reservation (checked before their bytes exist)."""
    k, kernel = m.kexec, capture_kernel_image(m)
    need = kernel.memsz + (k.initrd_size or 0)
    if need > size and m.design != "2004":
        modern = m.era == "modern"
        field = "kexec.crashkernel"     # unless a size the user gave is the one that is too big
        if k.capture_kernel_size is not None and kernel.size > size // 2 and \
                k.capture_kernel_size != (D.CAPTURE_KERNEL_SIZE_MODERN if modern else D.CAPTURE_KERNEL_SIZE_2005):
            field = "kexec.capture_kernel_size"
        elif k.initrd_size != (D.INITRD_SIZE_MODERN if modern else D.INITRD_SIZE_2005) and k.initrd_size > size // 2:
            field = "kexec.initrd_size"
        raise LayoutError(field, f"the capture kernel ({fmt_size(kernel.memsz)} once it runs: init_size) and initrd "
                                 f"({fmt_size(k.initrd_size)}) do not fit in crashkernel={k.crashkernel} "
                                 f"({fmt_size(size)}); make them smaller or the reservation larger")
    if m.design == "2004" and max(kernel.memsz, k.initrd_size or 0) > D.BACKUP_SIZE_2004:
        field = "kexec.capture_kernel_size" if kernel.memsz > D.BACKUP_SIZE_2004 else "kexec.initrd_size"
        raise LayoutError(field, "the 2004 design runs the capture kernel and initrd in the first 16 MiB; "
                                 f"{fmt_size(getattr(k, field.split('.')[1]))} does not fit")
