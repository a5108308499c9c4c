"""Outputs under hostile use (issue 17 items 5, 29, 31): devices and pipes are
written to, not replaced; symlinks are followed; errors name the target; a
killed write leaves no temporary; long names work."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from kdumpsim.atomic import atomic_write, write_text

ROOT = Path(__file__).resolve().parents[2]


def test_a_character_device_is_written_to_not_replaced() -> None:
    before = os.stat("/dev/zero")       # (not /dev/null: some sandboxes make it a regular file)
    write_text("/dev/zero", "discarded\n")
    after = os.stat("/dev/zero")
    assert (after.st_ino, after.st_rdev) == (before.st_ino, before.st_rdev)


def test_a_full_device_names_itself() -> None:
    with pytest.raises(OSError) as e:
        write_text("/dev/full", "x" * 10000)
    assert e.value.errno == errno.ENOSPC and e.value.filename == "/dev/full"


def test_a_fifo_stays_a_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    write_text(fifo, "through the pipe\n")
    reader.join(10)
    assert got == [b"through the pipe\n"]
    assert fifo.is_fifo()


def test_a_symlink_target_is_replaced_and_the_link_kept(tmp_path: Path) -> None:
    real, link = tmp_path / "real.json", tmp_path / "link.json"
    real.write_text("old")
    link.symlink_to(real)
    write_text(link, "new")
    assert link.is_symlink() and real.read_text() == "new"


def test_a_directory_is_refused_naming_it(tmp_path: Path) -> None:
    d = tmp_path / "adir"
    d.mkdir()
    with pytest.raises(IsADirectoryError) as e:
        write_text(d, "x")
    assert e.value.filename == str(d) and ".part" not in str(e.value)


def test_a_full_disk_names_the_target(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    with pytest.raises(OSError) as e, atomic_write(out, "w"):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert e.value.filename == str(out) and e.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []


def test_a_255_byte_name_is_accepted(tmp_path: Path) -> None:
    out = tmp_path / ("r" * 250 + ".json")
    write_text(out, "ok")
    assert out.read_text() == "ok" and [p.name for p in tmp_path.iterdir()] == [out.name]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_killed_write_leaves_no_temporary(tmp_path: Path, sig: int) -> None:
    code = ("import sys, time; from kdumpsim.atomic import atomic_write\n"
            "with atomic_write(sys.argv[1]) as fh:\n"
            "    fh.write(b'x' * 4096); fh.flush(); print('writing', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "vmcore")], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "writing\n"
    proc.send_signal(sig)
    proc.wait(30)
    proc.stdout.close()
    assert list(tmp_path.iterdir()) == []
