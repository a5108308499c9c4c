"""Purgatory: the code between the two kernels (paper 3.2, 3.3, 4.3).

kexec-tools purgatory/purgatory.c: `verify_sha256_digest` hashes every
segment but purgatory itself (zero-filled up to memsz) and compares with the
digest recorded at load time; on a mismatch it prints and loops forever.
Then purgatory/arch/i386/crashdump_backup.c `crashdump_backup_memory` copies
the first 640 KiB to the backup region, and purgatory jumps to the kernel.

The hash reads simulated RAM as it is when each chunk is hashed, so DMA that
lands in a segment before purgatory reaches it is caught, and DMA that lands
after is not.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING

from kdumpsim import defaults as D
from kdumpsim.kexec.load import KEXEC_LOAD_TIME, hash_states
from kdumpsim.names import PURGATORY
from kdumpsim.units import transfer_ns

if TYPE_CHECKING:
    from kdumpsim.crash.run import CrashRun
    from kdumpsim.machine.ram import PhysicalMemory


def purgatory(run: CrashRun) -> Generator:
    """Returns True when control reaches the capture kernel, False if purgatory hangs."""
    env, image = run.env, run.image
    run.mark("purgatory_start", PURGATORY)
    if image.sha256_digest is None:
        run.purgatory_result = "skipped"
        run.trace(env.now, PURGATORY, "sha256_skipped")
    else:
        ok = yield from verify_sha256_digest(run)
        if not ok:
            run.purgatory_result = "mismatch"
            run.trace(env.now, PURGATORY, "purgatory_mismatch")
            return False      # "sha256 digests do not match :(" and for (;;);
        run.purgatory_result = "ok"
    if image.backup_src is not None and image.backup_dest is not None:
        yield from crashdump_backup_memory(run)
    run.mark("purgatory_end", PURGATORY, entry=image.entry)
    return True


def verify_sha256_digest(run: CrashRun) -> Generator:
    """Hash each segment chunk by chunk as RAM is when the chunk is read. Until
    the first chunk something wrote after the load, the bytes are what kexec
    loaded: the hash resumes from the state kept for that chunk boundary
    (kexec.load.hash_states) instead of rehashing them; the digest and the
    timing are those of hashing every byte (tests/unit/test_purgatory_shortcut.py)."""
    env, mem, rate = run.env, run.machine.memory, run.timing.sha256_rate
    chunk = D.PURGATORY_HASH_CHUNK
    states = hash_states(run.image.segments, chunk)
    h = None                  # None: every chunk so far as loaded
    i = 0
    for seg in run.image.segments:
        if not seg.hashed:
            continue
        run.trace(env.now, PURGATORY, "sha256_segment", segment=seg.name, start=seg.start, memsz=seg.memsz)
        run.hash_times[seg.name] = (env.now, None)
        for off in range(0, seg.memsz, chunk):
            n = min(chunk, seg.memsz - off)
            if h is None and written_since_load(mem, seg.start + off, n):
                h = states[i].copy()
            if h is not None:
                for part in mem.iter_read(seg.start + off, n, env.now):
                    h.update(part)
            i += 1
            yield env.timeout(transfer_ns(n, rate))
        run.hash_times[seg.name] = (run.hash_times[seg.name][0], env.now)
    digest = (h if h is not None else states[i]).digest()
    return digest == run.image.sha256_digest


def written_since_load(mem: PhysicalMemory, addr: int, size: int) -> bool:
    """Did anything write [addr, addr+size) after kexec loaded it (up to now: the run is sequential)?"""
    return mem.written_after(addr, size, KEXEC_LOAD_TIME)


def crashdump_backup_memory(run: CrashRun) -> Generator:
    """Copy the backup source (first 640 KiB of RAM) into the backup segment."""
    env, mem, image = run.env, run.machine.memory, run.image
    src, size = image.backup_src
    dest = image.backup_dest
    run.trace(env.now, PURGATORY, "backup_start", src=src, dest=dest, bytes=size)
    chunk = D.PURGATORY_HASH_CHUNK
    for off in range(0, size, chunk):
        n = min(chunk, size - off)
        data = mem.read(src + off, n, env.now)
        yield env.timeout(transfer_ns(n, run.timing.backup_copy_rate))
        mem.write(dest + off, data, env.now, "purgatory")
    run.trace(env.now, PURGATORY, "backup_done")


def relocate_2004(run: CrashRun) -> Generator:
    """The 2004 design at the crash: back up the first 16 MB to the reserved
    backup region, then copy the pre-loaded pages of each segment into place
    (kexec's relocate_kernel). No digest: corruption goes unnoticed."""
    env, mem, image = run.env, run.machine.memory, run.image
    run.purgatory_result = "none"
    run.mark("purgatory_start", PURGATORY)
    yield from crashdump_backup_memory(run)
    rate = run.timing.backup_copy_rate
    for seg in image.segments:
        run.trace(env.now, PURGATORY, "relocate_segment", segment=seg.name, dest=seg.start, pages=len(seg.sources))
        for i, src in enumerate(seg.sources):
            data = mem.read(src, D.PAGE_SIZE, env.now)
            yield env.timeout(transfer_ns(D.PAGE_SIZE, rate))
            mem.write(seg.start + i * D.PAGE_SIZE, data, env.now, "purgatory")
        run.hash_times[seg.name] = (env.now, env.now)
    run.mark("purgatory_end", PURGATORY, entry=image.entry)
    return True
