"""The model's analysable verdict (kdumpsim.measure.verdict) against the real
tools' (kdumpsim.measure.analysis) on a small sample (issue #15; the 200-run
figure is in the README: experiments/analysable.yaml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from kdumpsim.sweep.agreement import report

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]

EXPERIMENT = f"""
name: verdict_small
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
    capture.collector: dd
    devices:
      - {{name: cap0, kind: cyclic, bus: pcie0, buffer_size: 256K, chunk: 16K, period: 10ms, capture_driver: false}}
seed: 15
replicates: 2
axes:
  - name: window
    linked:
      - {{label: log, devices.cap0.placement: {{mode: stale, start: 0x2d04000, end: 0x2da0000}}}}
      - {{label: page_tables, devices.cap0.placement: {{mode: stale, start: 0x2c00000, end: 0x2c80000}}}}
      - {{label: anywhere, devices.cap0.placement: {{mode: allocator}}}}
  - {{name: dma_start, key: devices.cap0.start, values: [50ms, 13s]}}
analyse: true
"""


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
