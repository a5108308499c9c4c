"""The run report: everything a reader needs to check the run and its vmcore."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from kdumpsim import __version__

if TYPE_CHECKING:
    from kdumpsim.crash.run import CrashRun


def build_report(run: CrashRun) -> dict[str, Any]:
    from kdumpsim.measure.metrics import notes_in_dump
    m, image = run.machine, run.image
    in_dump = notes_in_dump(run)
    return {
        "kdumpsim": __version__,
        "model": m.cfg.name,
        "seed": run.seed,
        "arch": m.arch,
        "era": m.era,
        "design": m.cfg.design,
        "kexec_method": image.method,
        "outcome": run.outcome,
        "timing_profile": m.cfg.timing.profile,
        "capture_memory": _capture_memory(run),
        "assumptions": assumptions(run),
        "metrics": run.metrics,
        "cpus": [{"id": c.id, "pid": c.pid, "answer": c.answer, "state": c.state,
                  "note_addr": c.note_addr, "saved_ns": c.saved_at,
                  "note_index": in_dump.index(c.id) if c.id in in_dump else None,
                  "registers": c.regs} for c in run.cpus],
        "panic_cpu": m.cfg.cpus.panic_cpu,
        "ram": [{"start": s, "end": e} for s, e in m.ram_ranges],
        "reservation": {"start": m.reservation.start, "end": m.reservation.end,
                        "low": list(m.reservation.low) if m.reservation.low else None,
                        "crashkernel": m.reservation.spec, "automatic": m.reservation.automatic},
        "backup": ({"src": image.backup_src[0], "size": image.backup_src[1], "dest": image.backup_dest}
                          if image.backup_src and image.backup_dest is not None else None),
        "segments": [{"name": s.name, "start": s.start, "end": s.end, "memsz": s.memsz,
                      "bufsz": len(s.data), "hashed": s.hashed} for s in image.segments],
        "cmdline": image.cmdline,
        "elfcorehdr": image.elfcorehdr,
        "sha256": image.sha256_digest.hex() if image.sha256_digest else None,
        "vmcore": _vmcore_summary(run),
    }


def _capture_memory(run: CrashRun) -> dict[str, Any] | None:
    mem = run.capture_mem
    if mem is None:
        return None
    return {"kernel_at": mem.kernel_at, "need": mem.need.parts, "minimum": mem.need.minimum,
            "oom": mem.oom, "hits": dict(sorted(mem.hits.items())), "crashed": run.capture_crashed,
            "uses": [{"start": u.start, "end": u.end, "kind": u.kind, "since_ns": u.since, "until_ns": u.until}
                     for u in mem.uses]}


def _vmcore_summary(run: CrashRun) -> dict[str, Any] | None:
    v = run.vmcore
    if v is None:
        return None
    return {"size": v.size, "elfclass": 64 if v.elfclass == 2 else 32, "notes_offset": v.notes_offset,
            "notes_bytes": len(v.notes),
            "loads": [{"offset": p.p_offset, "paddr": p.p_paddr, "vaddr": p.p_vaddr, "size": p.p_memsz}
                      for p in v.phdrs[1:]],
            "collector": run.machine.cfg.capture.collector,
            "dump_start_ns": run.copy.start if run.copy else None,
            "throughput": run.copy.throughput if run.copy else None}


def dumps(report: dict[str, Any]) -> str:
    """Canonical JSON: sorted keys, so the same run gives the same bytes."""
    return json.dumps(report, indent=2, sort_keys=True) + "\n"


def assumptions(run: CrashRun) -> list[str]:
    """What this run's answer rests on that no source gives (named, so a reader can weigh it)."""
    cfg = run.machine.cfg
    t = cfg.timing
    source = ("measured in the QEMU TCG lab (kdumpsim/lab/data/qemu-tcg-profile.yaml); the lab's panic-to-capture-kernel "
              "time is lumped into machine_kexec" if t.profile == "qemu-tcg" else
              "assumed times inside the published 4.6-6.5 s start of the capture service")
    out = [f"capture kernel timing (profile {t.profile}): vmcore_init, IOMMU init, driver probes and the dump service at "
           f"{t.vmcore_init / 1e9:g} s, {t.iommu_init / 1e9:g} s, {t.driver_init / 1e9:g} s and "
           f"{t.capture_boot / 1e9:g} s after the jump, in the kernel's initcall order: {source}"]
    if run.capture_mem is not None:
        out.append("capture kernel memory (kdumpsim.crash.capturemem): the 6.1 image and early allocations from a "
                   "real log; the initramfs unpack ratio, slab and driver allocations, the dump tool's process and "
                   "the allocator's top-down order are assumptions")
    kinds = {e.kind for e in run.engines}
    modes = {e.spec.placement.mode for e in run.engines}
    if "storage" in kinds:
        out.append("NVMe completion latency: a lognormal from a median and a 99.9th percentile; "
                   "HMB written 4 KiB every 1 ms until reset")
    if "stale" in modes or "wild" in modes:
        out.append("stale/wild DMA: a scenario (where and when are given by the model), not a measured rate")
    if any(e.spec.iova_in_use for e in run.engines):
        out.append("IOVA space in use by the device's other live mappings: given by the model (iova_in_use)")
    file_load = run.image.method == "kexec_file_load"
    if run.machine.cma is not None:
        out.append("CMA area: placed top-down, 4 MiB aligned; passed to the capture kernel and left out of the "
                   "dump as kexec_file_load does" + ("" if file_load else ", while the rest of the layout is kexec_load's"))
    if file_load:
        out.append("kexec_file_load: the kernel's purgatory taken as 16 KiB, a BIOS boot (no EFI runtime map in "
                   "the boot parameters), the boot parameters' E820 table not written")
        if (cfg.kernel.version or "") == "6.6":
            out.append("kernel 6.6: the first kernel's structures are simulated as 6.1's; the elfcorehdr is sized "
                       "for NR_CPUS_DEFAULT=8192 (MAXSMP) and CRASH_MAX_MEMORY_RANGES=8192")
    if cfg.capture.collector == "makedumpfile":
        out.append(f"makedumpfile -l -d {cfg.capture.dump_level}: reads mem_map and the pages it keeps at the "
                   "dump throughput (dd's per-byte rate); compression and writing overlap the reads")
    if run.machine.era == "2005" and "nic_rx_ring" in kinds:
        out.append("2.6.13 e1000 RX buffers: one slab object per page")
    return out
