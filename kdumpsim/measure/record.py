"""One flat record per run (Parquet and pandas): its columns are declared
here, beside the code that fills them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kdumpsim.crash.capturemem import DUMP_KINDS
from kdumpsim.measure.analysis import ANALYSIS_COLUMNS
from kdumpsim.measure.verdict import VERDICT_COLUMNS, verdict_record

if TYPE_CHECKING:
    from kdumpsim.crash.run import CrashRun


def mechanisms(run: CrashRun) -> list[str]:
    """The named ways DMA could reach memory no first-kernel driver owns, as
    this run's model sets them up ("none": only the page allocator's pages)."""
    cfg = run.machine.cfg
    out = []
    if cfg.design == "2004":
        out.append("design_2004")
    iommu = cfg.topology.iommu
    if iommu is not None and any(e.iova is not None for e in run.engines):
        out.append(f"iommu_{iommu.capture_kernel}" + ("_amd" if iommu.vendor == "amd" else ""))
    out += sorted({e.spec.placement.mode for e in run.engines} & {"stale", "wild", "cma"})
    return out or ["none"]

# Fixed columns (the analysis ones are filled when an experiment says `analyse: true`).
RECORD_COLUMNS = ("outcome", "kexec_method", "detected", "mechanisms", "dma_stop", "cpus_saved", "cpus_missing",
                  "cpus_never_answered", "cpus_note_overwritten", "corrupted_bytes", "dump_pages",
                  "dump_pages_corrupted", "dump_fidelity", "dma_bytes_after_panic", "cma_bytes_after_jump", "cma_hit_after_jump",
                  "capture_memory_hit", "dump_file_corrupted_bytes",
                  "reservation_start", "reservation_end",
                  # the collector (kdumpsim.crash.collector) and what its filtering did
                  "collector", "dump_level", "pages_excluded", "excluded_pages_hit", "struct_pages_changed",
                  "keep_set_changed") + VERDICT_COLUMNS + ANALYSIS_COLUMNS
# Per-region bytes, per-region DMA hits, per-phase times (seconds).
RECORD_PREFIXES = ("corrupted_bytes_", "dma_hit_bytes_", "t_")


def run_record(run: CrashRun) -> dict[str, Any]:
    """One flat row per run (for Parquet and pandas): outcome, metrics, phase times."""
    m, machine = run.metrics, run.machine
    row: dict[str, Any] = {
        "outcome": run.outcome,
        "kexec_method": run.image.method,
        "detected": m["detected"],
        "cpus_saved": m["cpus_saved"],
        "mechanisms": ",".join(mechanisms(run)),
        "dma_stop": ",".join(f"{name}:{d['stop_reason'] or 'never'}" for name, d in m["dma"].items()),
        "cpus_missing": len(m["cpus_missing"]),
        "cpus_never_answered": sum(w == "never_answered" for w in m["cpus_missing_why"].values()),
        "cpus_note_overwritten": sum(w == "note_overwritten" for w in m["cpus_missing_why"].values()),
        "cma_bytes_after_jump": m["cma_bytes_after_jump"],
        "cma_hit_after_jump": m["cma_bytes_after_jump"] > 0,
        "corrupted_bytes": m["corrupted_bytes"],
        "dump_pages": m["dump_pages"],
        "dump_pages_corrupted": m["dump_pages_corrupted"],
        "dump_fidelity": m["dump_fidelity"],
        "dma_bytes_after_panic": sum(sum(d.values()) for d in m["dma_hits"].values()),
        # the kinds of capture-kernel memory DMA hit while in use ("none"), and the bytes
        # that landed in the dump tool's buffers or the dump file's page cache
        "capture_memory_hit": ",".join(m["capture_memory_hits"]) or "none",
        "dump_file_corrupted_bytes": sum(n for k, n in m["capture_memory_hits"].items() if k in DUMP_KINDS),
        "reservation_start": machine.reservation.start,
        "reservation_end": machine.reservation.end,
        **{c: v for c, v in m["collector"].items() if c != "name"},
        "collector": m["collector"]["name"],
        **verdict_record(run),
    }
    for region, r in m["regions"].items():
        row[f"corrupted_bytes_{region}"] = r["bytes"]
    for region, by_dev in m["dma_hits"].items():
        row[f"dma_hit_bytes_{region}"] = sum(by_dev.values())
    for phase, ns in m["phase_ns"].items():
        row[f"t_{phase}"] = ns / 1e9
    return row
