"""Outputs are atomic: an interrupted or failed write never leaves a
half-written vmcore or report under the final name."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODEL = str(ROOT / "models" / "modern-x86_64.yaml")
SMALL = ["--set", 'memory.iomem=["00001000-0009fbff : System RAM", "00100000-3fffffff : System RAM"]',
         "--set", "memory.numa_nodes=1", "--set", "topology.buses.pcie1.numa_node=0",
         "--set", "kexec.crashkernel=128M", "--set", "kexec.initrd_size=8M"]


def kdumpsim(*args: str, limit_bytes: int | None = None, **kw) -> subprocess.Popen:
    """Start the real CLI in a child process, optionally with a file-size limit
    (RLIMIT_FSIZE: writes past it fail with EFBIG, like a disk filling up)."""
    def preexec() -> None:
        if limit_bytes is not None:
            import resource
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    return subprocess.Popen([sys.executable, "-m", "kdumpsim", *args], cwd=ROOT, preexec_fn=preexec,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def writing_into(pid: int, d: Path) -> bool:
    """Has process `pid` a file open in `d` (the unnamed O_TMPFILE temporary shows as `d/#N (deleted)`)?"""
    fds = Path(f"/proc/{pid}/fd")
    try:
        links = [os.readlink(fd) for fd in fds.iterdir()]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return any(link.startswith(f"{d}/") for link in links)


def leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def test_full_disk_while_writing_a_vmcore_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "vmcore"
    proc = kdumpsim("run", MODEL, *SMALL, "--quiet", "--vmcore", str(out), limit_bytes=64 << 20)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert err.startswith("kdumpsim: error: ") and "File too large" in err and "Traceback" not in err
    assert leftovers(tmp_path) == []


def test_full_disk_while_writing_a_report_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    proc = kdumpsim("run", MODEL, *SMALL, "--quiet", "--report", str(out), limit_bytes=1000)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "Traceback" not in err
    assert leftovers(tmp_path) == []


def test_ctrl_c_during_a_vmcore_write_leaves_no_partial_file(tmp_path: Path) -> None:
    out = tmp_path / "vmcore"
    proc = kdumpsim("run", MODEL, *SMALL, "--quiet", "--vmcore", str(out))
    deadline = time.time() + 60
    while time.time() < deadline and not writing_into(proc.pid, tmp_path):
        time.sleep(0.02)
    assert writing_into(proc.pid, tmp_path), "the write never started"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err
    assert leftovers(tmp_path) == []


def test_a_completed_vmcore_replaces_the_target_in_one_step(tmp_path: Path) -> None:
    out = tmp_path / "vmcore"
    out.write_bytes(b"old")
    proc = kdumpsim("run", MODEL, *SMALL, "--quiet", "--vmcore", str(out), "--report", str(tmp_path / "r.json"))
    proc.communicate(timeout=120)
    assert proc.returncode == 0
    assert out.read_bytes()[:4] == b"\x7fELF"
    assert leftovers(tmp_path) == ["r.json", "vmcore"]


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_real_enospc_on_a_tiny_filesystem(tmp_path: Path) -> None:
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("this sandbox cannot mount tmpfs")
    try:
        # A vmcore the disk cannot hold is refused before anything is simulated or written.
        proc = kdumpsim("run", MODEL, *SMALL, "--quiet", "--vmcore", str(mnt / "vmcore"))
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 2 and "vmcore" in err and "Traceback" not in err
        assert leftovers(mnt) == []
        # A write that runs out of room midway: the disk nearly full, then the trace.
        (mnt / "filler").write_bytes(bytes(8 * 1024 * 1024 - 64 * 1024))
        proc = kdumpsim("run", MODEL, *SMALL, "--quiet", "--trace", str(mnt / "trace.jsonl"))
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 1 and "No space left on device" in err and "Traceback" not in err
        assert leftovers(mnt) == ["filler"]
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
