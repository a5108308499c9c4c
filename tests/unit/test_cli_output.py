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
         "--set", "kexec.crashkernel=128M", "--set", "kexec.initrd_size=8M"]


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


HOSTILE = "\x1b]0;pwned\x07\x1b[2J\r\u202espoof"


def _core_with_hostile_text() -> bytes:
    """A tiny ELF64 core whose note name and VMCOREINFO carry terminal escapes."""
    from kdumpsim.formats import elf
    from kdumpsim.formats.elf import Phdr
    layout = elf.layout_for(elf.ELFCLASS64)
    notes = elf.pack_note(f"CORE{HOSTILE}".encode(), 1, bytes(16))
    notes += elf.pack_note(b"VMCOREINFO", 0, f"OSRELEASE=6.1{HOSTILE}\nPAGESIZE=4096\n".encode())
    phdrs = [Phdr(elf.PT_NOTE, 0, 0x1000, 0, 0, len(notes), len(notes), 0),
             Phdr(elf.PT_LOAD, 7, 0x2000, 0xC0100000, 0x100000, 0x1000, 0x1000, 0)]
    head = layout.pack_ehdr(elf.EM_X86_64, len(phdrs)) + b"".join(map(layout.pack_phdr, phdrs))
    return head.ljust(0x1000, b"\0") + notes.ljust(0x1000, b"\0") + bytes(0x1000)


def test_inspect_escapes_a_crafted_vmcore(tmp_path: Path, capsys) -> None:
    from kdumpsim.cli.main import main
    core = tmp_path / "core"
    core.write_bytes(_core_with_hostile_text())
    assert main(["inspect", str(core)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\r" not in out and "\u202e" not in out
    assert "\\x1b]0;pwned\\x07" in out


def test_run_escapes_the_model_name(capsys) -> None:
    from kdumpsim.cli.main import main
    assert main(["run", str(PAPER), "--set", f"name=evil{HOSTILE}"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "evil\\x1b]0;pwned" in out


def test_a_non_utf8_file_name_on_a_strict_utf8_stdout(tmp_path: Path) -> None:
    name = os.fsencode(str(tmp_path)) + b"/core-\xff\xfe"
    with open(name, "wb") as fh:
        fh.write(_core_with_hostile_text())
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict"}
    r = subprocess.run([os.fsencode(sys.executable), b"-m", b"kdumpsim", b"inspect", name], cwd=ROOT, env=env,
                       capture_output=True)
    assert r.returncode == 0 and b"Traceback" not in r.stderr, r.stderr
    assert b"core-\\xff\\xfe" in r.stdout
    r = subprocess.run([os.fsencode(sys.executable), b"-m", b"kdumpsim", b"validate", name + b".missing"],
                       cwd=ROOT, env=env, capture_output=True)
    assert r.returncode == 2 and b"Traceback" not in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
