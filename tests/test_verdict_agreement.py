"""The model's analysable verdict (kdumpsim.measure.verdict) against the real
tools' (kdumpsim.measure.analysis) on a small sample (issue #15; the 200-run
figure is in the README: experiments/analysable.yaml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import WINDOW_ANYWHERE, WINDOW_LOG, WINDOW_PAGE_TABLES, small_analyse_experiment

from kdumpsim.sweep.agreement import report

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]

EXPERIMENT = small_analyse_experiment(
    "verdict_small", seed=15, replicates=2,
    device="{name: cap0, kind: cyclic, bus: pcie0, buffer_size: 256K, chunk: 16K, period: 10ms, capture_driver: false}",
    windows=[WINDOW_LOG, WINDOW_PAGE_TABLES, WINDOW_ANYWHERE],
    extra="    capture.collector: dd\n")


def test_model_verdict_agrees_with_the_real_tools(tmp_path: Path) -> None:
    from conftest import require_tool
    require_tool("makedumpfile")
    exp = tmp_path / "exp.yaml"
    exp.write_text(EXPERIMENT)
    out = tmp_path / "out"
    subprocess.run([sys.executable, "-m", "kdumpsim", "experiment", str(exp), "--out", str(out),
                    "--workers", "2", "--no-progress"], cwd=ROOT, check=True, capture_output=True)
    df = pd.read_parquet(out / "results.parquet")
    r = report(df)
    assert r["runs"] == 12
    # The sample spans the outcomes: dumps the tools can and cannot analyse.
    assert df["analysable"].any() and not df["analysable"].all()
    assert r["agree"] >= 11, df[["window", "dma_start", "analysable", "analysable_model", "structures_changed"]]
