"""The CLI's text output under hostile use (issue 17 items 8, 20, 29, 31)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
MODERN = ROOT / "models" / "modern-x86_64.yaml"
PAPER = ROOT / "models" / "paper-i386-2005.yaml"
SMALL = ["--set", 'memory.iomem=["00001000-0009fbff : System RAM", "00100000-3fffffff : System RAM"]',
         "--set", "memory.numa_nodes=1", "--set", "topology.buses.pcie1.numa_node=0",
         "--set", "kexec.crashkernel=128M"]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "kdumpsim", *args]


def test_sigterm_during_a_vmcore_write_leaves_nothing(tmp_path: Path) -> None:
    proc = subprocess.Popen(cli("run", str(MODERN), *SMALL, "--quiet", "--vmcore", str(tmp_path / "vmcore")),
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    fds = Path(f"/proc/{proc.pid}/fd")
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if any(os.readlink(fd).startswith(f"{tmp_path}/") for fd in fds.iterdir()):
                break
        except OSError:
            pass
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "terminated" in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []


def test_a_closed_stdout_pipe_is_quiet(tmp_path: Path) -> None:
    exp = tmp_path / "e.yaml"
    exp.write_text(yaml.safe_dump({"name": "many", "base": {"model": str(PAPER)}, "seed": 1, "replicates": 1,
                                   "axes": [{"key": "devices.eth0.packet_rate",
                                             "range": {"start": 1000, "stop": 1599, "steps": 600}}]}))
    proc = subprocess.Popen(cli("experiment", str(exp), "--dry-run"), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline()
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and b"Broken pipe" not in err and b"Traceback" not in err, err
