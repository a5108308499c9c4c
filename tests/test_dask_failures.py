"""A Dask sweep that loses its cluster stops like a local one (issue 17 item
19): a bad scheduler file, the scheduler killed mid-sweep and a worker the
scheduler gives up on (KilledWorker) each end with one line, exit status 1 or
2, the finished runs saved and "continue with ... --resume"; the resumed table
is whole. Real scheduler and worker processes on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "models" / "paper-i386-2005.yaml"
KDUMPSIM = [sys.executable, "-c", "import sys; from kdumpsim.cli import main; sys.exit(main())"]
DASK = [str(Path(sys.executable).parent / "dask")]


def experiment(tmp: Path, replicates: int = 40) -> Path:
    raw = {"name": "daskfail", "base": {"model": str(PAPER)}, "seed": 3, "replicates": replicates,
           "metrics": ["outcome"], "axes": [{"key": "devices.eth0.start", "values": ["0ms", "1ms"]}]}
    path = tmp / "e.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


class Cluster:
    """`dask scheduler` and `dask worker` processes (no nanny) writing a scheduler file."""

    def __init__(self, tmp: Path, workers: int, env: dict[str, str] | None = None):
        self.tmp, self.file = tmp, tmp / "scheduler.json"
        self.env = {**os.environ, **(env or {})}
        self.scheduler = self._start(DASK + ["scheduler", "--host", "127.0.0.1", "--port", "0", "--scheduler-file",
                                             str(self.file), "--no-dashboard"], "sched")
        deadline = time.monotonic() + 60
        while not self.file.exists():
            assert time.monotonic() < deadline and self.scheduler.poll() is None, self.log("sched")
            time.sleep(0.1)
        self.workers = [self._start(DASK + ["worker", "--scheduler-file", str(self.file), "--nthreads", "1",
                                            "--no-nanny", "--no-dashboard", "--host", "127.0.0.1", "--name", f"w{i}",
                                            "--local-directory", str(tmp / "space"), "--memory-limit", "0"],
                                    f"w{i}") for i in range(workers)]

    def _start(self, cmd: list[str], name: str) -> subprocess.Popen:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(self.tmp / f"{name}.log", "w"),
                                env=self.env)

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text()

    def stop(self) -> None:
        for p in [*self.workers, self.scheduler]:
            if p.poll() is None:
                p.kill()
            p.wait()


def start_sweep(exp: Path, out: Path, scheduler: Path) -> subprocess.Popen:
    return subprocess.Popen(KDUMPSIM + ["experiment", str(exp), "--out", str(out), "--executor", "dask",
                                        "--scheduler", str(scheduler), "--chunk-size", "1", "--no-progress"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_parts(proc: subprocess.Popen, out: Path, n: int) -> None:
    deadline = time.monotonic() + 90
    while len(list((out / "parts").glob("part-*.parquet"))) < n:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)


def saved(out: Path) -> int:
    return sum(pq.read_metadata(p).num_rows for p in (out / "parts").glob("part-*.parquet"))


def assert_stopped_and_resumable(proc: subprocess.Popen, exp: Path, out: Path, total: int, what: str) -> None:
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    lines = [ln for ln in err.splitlines() if ln.startswith("kdumpsim: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert what in lines[0], lines[0]
    n = saved(out)
    assert 0 < n < total
    assert f"{n} of {total} runs are saved in {out / 'parts'}; continue with: " in lines[0], lines[0]
    assert lines[0].endswith(f"--out {out} --resume"), lines[0]
    r = subprocess.run(KDUMPSIM + ["experiment", str(exp), "--out", str(out), "--resume", "--workers", "1",
                                   "--no-progress"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"resuming: {n} of {total} runs" in r.stderr
    table = pq.read_table(out / "results.parquet")
    assert table.num_rows == total
    assert len({(p, q) for p, q in zip(table["point"].to_pylist(), table["replicate"].to_pylist())}) == total


def test_a_scheduler_file_of_invalid_json(tmp_path: Path) -> None:
    exp = experiment(tmp_path, replicates=1)
    bad = tmp_path / "scheduler.json"
    bad.write_text('{"address": ')
    r = subprocess.run(KDUMPSIM + ["experiment", str(exp), "--out", str(tmp_path / "out"), "--executor", "dask",
                                   "--scheduler", str(bad)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith(f"kdumpsim: error: {bad}: not a Dask scheduler file (it holds no valid JSON"), line
    assert "continue with: " in line and line.endswith("--resume)"), line


@pytest.mark.slow
def test_the_scheduler_killed_mid_sweep(tmp_path: Path) -> None:
    exp, out = experiment(tmp_path), tmp_path / "out"
    cluster = Cluster(tmp_path, workers=1)
    try:
        proc = start_sweep(exp, out, cluster.file)
        wait_for_parts(proc, out, 3)
        cluster.scheduler.send_signal(signal.SIGKILL)
        cluster.scheduler.wait()
        assert_stopped_and_resumable(proc, exp, out, 80, "the Dask scheduler")
    finally:
        cluster.stop()


@pytest.mark.slow
def test_a_worker_the_scheduler_gives_up_on(tmp_path: Path) -> None:
    """allowed-failures 0: the chunk on a killed worker is lost for good (KilledWorker)."""
    exp, out = experiment(tmp_path), tmp_path / "out"
    cluster = Cluster(tmp_path, workers=2, env={"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"})
    try:
        proc = start_sweep(exp, out, cluster.file)
        wait_for_parts(proc, out, 3)
        cluster.workers[0].send_signal(signal.SIGKILL)
        assert_stopped_and_resumable(proc, exp, out, 80, "KilledWorker")
    finally:
        cluster.stop()
