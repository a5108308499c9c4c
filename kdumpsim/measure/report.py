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
        "outcome": run.outcome,
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
    out = ["capture kernel timing: vmcore_init, IOMMU init, driver probes and the dump service at "
           f"{cfg.timing.vmcore_init / 1e9:g} s, {cfg.timing.iommu_init / 1e9:g} s, {cfg.timing.driver_init / 1e9:g} s and "
           f"{cfg.timing.capture_boot / 1e9:g} s after the jump: the kernel's initcall order, assumed times "
           "(the lab's QEMU profile is the measured one)"]
    kinds = {e.kind for e in run.engines}
    modes = {e.spec.placement.mode for e in run.engines}
    if "storage" in kinds:
        out.append("NVMe completion latency: a lognormal from a median and a 99.9th percentile; "
                   "HMB written 4 KiB every 1 ms until reset")
    if "stale" in modes or "wild" in modes:
        out.append("stale/wild DMA: a scenario (where and when are given by the model), not a measured rate")
    if any(e.spec.iova_in_use for e in run.engines):
        out.append("IOVA space in use by the device's other live mappings: given by the model (iova_in_use)")
    if run.machine.cma is not None:
        out.append("CMA area: placed top-down, 4 MiB aligned; passed to the capture kernel and left out of the "
                   "dump as kexec_file_load does, while the rest of the layout is kexec_load's")
    if cfg.capture.collector == "makedumpfile":
        out.append(f"makedumpfile -l -d {cfg.capture.dump_level}: reads mem_map and the pages it keeps at the "
                   "dump throughput (dd's per-byte rate); compression and writing overlap the reads")
    if run.machine.era == "2005" and "nic_rx_ring" in kinds:
        out.append("2.6.13 e1000 RX buffers: one slab object per page")
    return out
