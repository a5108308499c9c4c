"""A sweep killed at random moments — SIGKILL of the main process, SIGKILL of
a worker, Ctrl-C — and resumed with --resume each time ends with exactly the
table of an uninterrupted run: nothing lost, nothing counted twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SMALL = ROOT / "tests" / "experiments" / "small_i386.yaml"
KDUMPSIM = [sys.executable, "-c", "import sys; from kdumpsim.cli import main; sys.exit(main())"]
RUNS = 12 * 60
pytestmark = pytest.mark.slow


def experiment(tmp: Path) -> Path:
    raw = yaml.safe_load(SMALL.read_text())
    raw["base"]["model"] = str(ROOT / "models" / "paper-i386-2005.yaml")
    raw.update(replicates=60, plots=[])      # ~7 s: long enough to interrupt (96 runs took 0.6 s)
    path = tmp / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def parts(out: Path) -> int:
    return len(list((out / "parts").glob("part-*.parquet"))) if (out / "parts").exists() else 0


def saved_rows(out: Path) -> int:
    return sum(pq.read_metadata(p).num_rows for p in (out / "parts").glob("part-*.parquet"))


def start(exp: Path, out: Path, resume: bool) -> subprocess.Popen:
    argv = KDUMPSIM + ["experiment", str(exp), "--out", str(out), "--workers", "2", "--chunk-size", "2",
                       "--no-progress"] + (["--resume"] if resume else [])
    # Its own session, so that Ctrl-C can reach the whole process group as a terminal's does.
    return subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=_sigint_default)


def _sigint_default() -> None:
    """Ctrl-C must reach Python even when the tests run from a background job
    (which starts with SIGINT ignored, and Python then installs no handler)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupt(proc: subprocess.Popen, out: Path, at_parts: int, how: str) -> None:
    """Wait until `at_parts` part files exist, then interrupt the sweep `how`."""
    deadline = time.monotonic() + 240
    while parts(out) < at_parts:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    if how == "worker":
        workers = psutil.Process(proc.pid).children(recursive=True)
        assert workers, "no worker processes to kill"
        workers[0].send_signal(signal.SIGKILL)
    elif how == "main":
        proc.send_signal(signal.SIGKILL)
    else:
        os.killpg(proc.pid, signal.SIGINT)      # Ctrl-C: the terminal signals every process of the group
    _, err = proc.communicate(timeout=240)
    assert "Traceback" not in err, err
    if how == "main":
        # The orphaned workers notice their parent is gone and exit on their own.
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode != 0 and "--resume" in err, err


@pytest.fixture(scope="module")
def whole(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    tmp = tmp_path_factory.mktemp("whole")
    out = tmp / "out"
    proc = start(experiment(tmp), out, resume=False)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return (out / "results.parquet").read_bytes()


@pytest.mark.parametrize("how", ["main", "worker", "ctrl_c"])
def test_killed_twice_then_resumed_equals_uninterrupted(how: str, whole: bytes, tmp_path: Path) -> None:
    exp, out = experiment(tmp_path), tmp_path / "out"
    interrupt(start(exp, out, resume=False), out, 2, how)          # early
    first = saved_rows(out)
    interrupt(start(exp, out, resume=True), out, parts(out) + 8, how)   # later, during a resumed run
    second = saved_rows(out)
    assert 0 < first < second < RUNS
    proc = start(exp, out, resume=True)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert f"resuming: {second} of {RUNS} runs" in err
    assert (out / "results.parquet").read_bytes() == whole


def _worker_signals(_: object) -> list[object]:
    return [signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)]


def test_a_worker_ends_quietly_on_the_pools_sigterm() -> None:
    """When one worker dies the pool SIGTERMs the rest: a worker forked while the
    CLI's unwinding SIGTERM handler was set must not run it (it printed a traceback)."""
    from kdumpsim.cli.main import _sigterm_unwinds
    from kdumpsim.sweep.executors import LocalExecutor
    with _sigterm_unwinds(), LocalExecutor(1) as ex:
        term, intr = next(ex.map_unordered(_worker_signals, [None]))
    assert term == signal.SIG_DFL and intr == signal.SIG_IGN
