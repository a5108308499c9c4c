"""Measuring a run: outcome, corruption, the report and the results row."""

from __future__ import annotations

import simpy

from kdumpsim.config.model import ModelConfig
from kdumpsim.crash.run import CrashRun, run_crash
from kdumpsim.measure.metrics import finish


def simulate(cfg: ModelConfig, seed: int = 0, env_type: type[simpy.Environment] = simpy.Environment,
             trace: bool = True) -> CrashRun:
    """Run one crash of `cfg` with `seed` and measure it (run.outcome, run.metrics).
    trace=False (sweeps) keeps no trace events; the metrics are the same."""
    run = run_crash(cfg, seed, env_type, trace)
    finish(run)
    return run


__all__ = ["simulate"]
