"""`analyse: true` in an experiment runs the real crash tools on every run's
vmcore and keeps whether the dump still analyses (issue #8's metric)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import WINDOW_ANYWHERE, WINDOW_LOG, small_analyse_experiment

from kdumpsim.measure.analysis import ANALYSIS_COLUMNS

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]

EXPERIMENT = small_analyse_experiment(
    "analyse_small", seed=3, replicates=1,
    device="{name: cap0, kind: cyclic, bus: pcie0, buffer_size: 624K, chunk: 64K, period: 5ms, capture_driver: false}",
    windows=[WINDOW_LOG, WINDOW_ANYWHERE])


@pytest.mark.parametrize("tool", ["makedumpfile"])
def test_analyse_columns_are_measured_and_deterministic(tmp_path: Path, tool: str) -> None:
    from conftest import require_tool
    require_tool(tool)
    exp = tmp_path / "exp.yaml"
    exp.write_text(EXPERIMENT)
    tables = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        subprocess.run([sys.executable, "-m", "kdumpsim", "experiment", str(exp), "--out", str(out),
                        "--workers", str(workers), "--no-progress"], cwd=ROOT, check=True, capture_output=True)
        tables.append(pd.read_parquet(out / "results.parquet"))
        assert not list((out / "scratch").rglob("*.vmcore")), "analysed vmcores are deleted"
    a, b = tables
    assert set(ANALYSIS_COLUMNS) <= set(a.columns)
    pd.testing.assert_frame_equal(a, b)
    by = a.set_index(["window", "dma_start"])
    # A ring covering the whole log buffer, written before the copy reads it, leaves an unreadable log;
    # the same DMA after the copy passed, or elsewhere, leaves a dump that analyses.
    assert not by.loc[("log", 0.05), "log_readable"]
    assert by.loc[("anywhere", 0.05), "analysable"] and by.loc[("log", 13.0), "log_readable"]
    shutil.rmtree(tmp_path)
