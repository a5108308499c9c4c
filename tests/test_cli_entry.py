"""`python -m kdumpsim CMD` behaves exactly like `kdumpsim CMD`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).with_name("kdumpsim")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    (d / "bad.jsonl").write_text('{"time_ns": "x", "actor": "cpu0", "kind": "panic"}\n')
    (d / "notelf").write_bytes(b"hello, not an ELF file\n")
    return d


CASES = {
    "version": ["--version"],
    "no command": [],
    "run help": ["run", "--help"],
    "validate ok": ["validate", "models/paper-i386-2005.yaml"],
    "validate bad": ["validate", "tests/bad_models/device_named_cpu1.yaml"],
    "timeline bad trace": ["timeline", "{d}/bad.jsonl", "--perfetto", "{d}/out.json"],
    "timeline nothing to do": ["timeline", "{d}/bad.jsonl"],
    "inspect not elf": ["inspect", "{d}/notelf"],
    "experiment dry run": ["experiment", "experiments/dma_sweep.yaml", "--dry-run"],
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_module_and_script_agree(case, inputs):
    if not SCRIPT.exists():
        pytest.skip(f"no console script beside {sys.executable} (install with make)")
    argv = [a.format(d=inputs) for a in CASES[case]]
    by_module = subprocess.run([sys.executable, "-m", "kdumpsim", *argv], cwd=ROOT, capture_output=True, text=True)
    by_script = subprocess.run([str(SCRIPT), *argv], cwd=ROOT, capture_output=True, text=True)
    assert "Traceback" not in by_module.stderr, by_module.stderr
    assert (by_module.returncode, by_module.stdout, by_module.stderr) == \
        (by_script.returncode, by_script.stdout, by_script.stderr)
    if case in ("validate bad", "timeline bad trace", "inspect not elf", "timeline nothing to do"):
        assert by_module.returncode == 2 and len(by_module.stderr.splitlines()) == 1, by_module.stderr


def test_bad_trace_names_file_and_line(inputs):
    p = subprocess.run([sys.executable, "-m", "kdumpsim", "timeline", str(inputs / "bad.jsonl"), "--plot",
                        str(inputs / "g.png")], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr.startswith("kdumpsim: error: ") and "bad.jsonl" in p.stderr and "line 1" in p.stderr
    assert not (inputs / "g.png").exists()
