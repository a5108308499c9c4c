"""One flat record per run (Parquet and pandas): its columns are declared
here, beside the code that fills them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kdumpsim.measure.analysis import ANALYSIS_COLUMNS

if TYPE_CHECKING:
    from kdumpsim.crash.run import CrashRun

# Fixed columns (the analysis ones are filled when an experiment says `analyse: true`).
RECORD_COLUMNS = ("outcome", "detected", "cpus_saved", "cpus_missing", "corrupted_bytes", "dump_pages",
                  "dump_pages_corrupted", "dump_fidelity", "dma_bytes_after_panic", "reservation_start",
                  "reservation_end") + ANALYSIS_COLUMNS
# Per-region bytes, per-region DMA hits, per-phase times (seconds).
RECORD_PREFIXES = ("corrupted_bytes_", "dma_hit_bytes_", "t_")


def run_record(run: CrashRun) -> dict[str, Any]:
    """One flat row per run (for Parquet and pandas): outcome, metrics, phase times."""
    m, machine = run.metrics, run.machine
    row: dict[str, Any] = {
        "outcome": run.outcome,
        "detected": m["detected"],
        "cpus_saved": m["cpus_saved"],
        "cpus_missing": len(m["cpus_missing"]),
        "corrupted_bytes": m["corrupted_bytes"],
        "dump_pages": m["dump_pages"],
        "dump_pages_corrupted": m["dump_pages_corrupted"],
        "dump_fidelity": m["dump_fidelity"],
        "dma_bytes_after_panic": sum(sum(d.values()) for d in m["dma_hits"].values()),
        "reservation_start": machine.reservation.start,
        "reservation_end": machine.reservation.end,
    }
    for region, r in m["regions"].items():
        row[f"corrupted_bytes_{region}"] = r["bytes"]
    for region, by_dev in m["dma_hits"].items():
        row[f"dma_hit_bytes_{region}"] = sum(by_dev.values())
    for phase, ns in m["phase_ns"].items():
        row[f"t_{phase}"] = ns / 1e9
    return row
