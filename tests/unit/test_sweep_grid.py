"""The sweep grid is streamed and its labels are exact where rounding would
merge values (issue 17 items 25 and 32)."""

from __future__ import annotations

import itertools
import tracemalloc
from pathlib import Path

import pytest
import yaml

from kdumpsim.sweep.design import load_experiment, run_seed

ROOT = Path(__file__).resolve().parents[2]
PAPER = ROOT / "models" / "paper-i386-2005.yaml"


def write(tmp: Path, axes: list, sample: dict | None = None, replicates: int = 1) -> Path:
    raw = {"name": "grid", "base": {"model": str(PAPER)}, "seed": 5, "replicates": replicates, "axes": axes}
    if sample:
        raw["sample"] = sample
    path = tmp / "grid.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_a_fine_duration_axis_is_not_a_duplicate(tmp_path: Path) -> None:
    """0..20000 ns in 1 ns steps: '10us' and '10.001us' round to one label, but are two values."""
    exp = load_experiment(write(tmp_path, [{"name": "t", "key": "devices.eth0.start",
                                            "range": {"start": "0ns", "stop": "20000ns", "steps": 20001}}]))
    labels = [p.label for p in exp.points]
    assert len(set(labels)) == 20001
    assert labels[10000] == "t=10us" and labels[10001] == "t=10001ns"
    assert exp.points[10001].overrides == {"devices.eth0.start": "10001ns"}


def test_a_coarse_axis_keeps_its_rounded_labels(tmp_path: Path) -> None:
    exp = load_experiment(write(tmp_path, [{"name": "t", "key": "devices.eth0.start",
                                            "range": {"start": "0ns", "stop": "2ms", "steps": 3}}]))
    assert [p.label for p in exp.points] == ["t=0ns", "t=1ms", "t=2ms"]


def test_streamed_points_are_the_product_they_replace(tmp_path: Path) -> None:
    """Point ids, labels, overrides and seeds are those of the itertools.product
    list built before (first axis outermost, sampled rows innermost)."""
    axes = [{"name": "a", "key": "devices.eth0.start", "values": ["0ms", "1ms", "2ms"]},
            {"name": "b", "key": "devices.eth0.packet_rate", "values": [100, 2000]}]
    sample = {"method": "lhs", "count": 4, "axes": [{"name": "c", "key": "cpus.busy_share", "low": 0, "high": 0.5}]}
    exp = load_experiment(write(tmp_path, axes, sample, replicates=2))
    a, b, c = exp.axes
    want = []
    for (i, j), k in itertools.product(itertools.product(range(3), range(2)), range(4)):
        over = {**a.settings[i], **b.settings[j], **c.settings[k]}
        want.append((f"a={a.display[i]} b={b.display[j]} c={c.display[k]}", over))
    got = [(p.label, p.overrides) for p in exp.points]
    assert got == want
    assert [p.index for p in exp.points] == list(range(24))
    assert exp.points[-1] == exp.points[23] and exp.points[5:7] == [exp.points[5], exp.points[6]]
    runs = exp.runs()
    assert [(r.point, r.replicate) for r in runs] == [(p, r) for p in range(24) for r in range(2)]
    assert all(r.seed == run_seed(5, exp.points[r.point], r.replicate) for r in runs)


def test_the_grid_is_not_built_in_memory(tmp_path: Path) -> None:
    """90000 points: loading and walking them keeps memory flat (the list of
    Points it replaces took ~100 MB)."""
    axes = [{"name": "a", "key": "devices.eth0.start", "range": {"start": "0ms", "stop": "299ms", "steps": 300}},
            {"name": "b", "key": "cpus.busy_share", "range": {"start": 0.0, "stop": 0.299, "steps": 300}}]
    path = write(tmp_path, axes)
    tracemalloc.start()
    try:
        exp = load_experiment(path)
        n = sum(1 for _ in exp.points)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert n == 90000 and len(exp.points) == 90000
    assert exp.points[89999].label == "a=299ms b=0.299"
    assert peak < 25 * 2**20, peak


@pytest.mark.slow
def test_dry_run_of_a_100000_point_axis(tmp_path: Path) -> None:
    """Every point validated and listed in flat memory (it spent over 10 minutes
    on a packet_rate axis, and held every point's model)."""
    import subprocess
    import sys
    import time
    path = write(tmp_path, [{"name": "t", "key": "devices.eth0.start",
                             "range": {"start": "0ms", "stop": "99999ms", "steps": 100000}}])
    t0 = time.monotonic()
    # the child reports its own peak, VmHWM of its own mm: getrusage's maxrss would carry the
    # test worker's size over from the fork (and RUSAGE_CHILDREN another test's crash or gdb)
    child = ("import sys\nfrom kdumpsim.cli import main\ntry:\n    rc = main()\nfinally:\n"
             "    hwm = [w for w in open('/proc/self/status') if w.startswith('VmHWM:')][0].split()[1]\n"
             "    sys.stderr.write(f'maxrss={hwm}\\n')\nsys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", child, "experiment", str(path), "--dry-run"], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - t0 < 300               # ~50 s on a busy 2-core machine
    lines = r.stdout.splitlines()
    assert len(lines) == 100000 and lines[-1].split() == ["99999", "t=99999ms"]
    maxrss = int(r.stderr.rsplit("maxrss=", 1)[1])
    assert maxrss < 400 * 1024    # KiB: ~220 MiB measured
