"""`analyse: true` in an experiment runs the real crash tools on every run's
vmcore and keeps whether the dump still analyses (issue #8's metric)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from kdumpsim.measure.analysis import ANALYSIS_COLUMNS

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]

EXPERIMENT = f"""
name: analyse_small
base:
  model: {ROOT}/models/modern-x86_64.yaml
  overrides:
    cpus.count: 2
    cpus.sockets: 1
    cpus.panic_cpu: 1
    memory.numa_nodes: 1
    topology.buses.1.numa_node: 0
    memory.iomem: ["00001000-0009fbff : System RAM", "00100000-1fffffff : System RAM"]
    kexec.crashkernel: 128M
    kexec.initrd_size: 8M       # the default 28M, unpacked, does not fit the capture kernel in 128M
    devices:
      - {{name: cap0, kind: cyclic, bus: pcie0, buffer_size: 624K, chunk: 64K, period: 5ms, capture_driver: false}}
seed: 3
replicates: 1
axes:
  - name: window
    linked:
      - {{label: log, devices.cap0.placement: {{mode: stale, start: 0x2d04000, end: 0x2da0000}}}}
      - {{label: anywhere, devices.cap0.placement: {{mode: allocator}}}}
  - {{name: dma_start, key: devices.cap0.start, values: [50ms, 13s]}}
analyse: true
"""


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
