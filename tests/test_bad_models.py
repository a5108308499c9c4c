"""Bad input: every broken model file gets exit status 2 and ONE line naming
the file, the field (dotted YAML path) and what is wrong - never a traceback.

The corpus is tests/bad_models/*.yaml: each file is a full model with exactly
one thing wrong (or a file that is not a model at all) and starts with
    # expect: <fragment of the message>
    # field: <dotted.field>          (optional)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kdumpsim.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
CORPUS_DIR = ROOT / "tests" / "bad_models"
CORPUS = sorted(CORPUS_DIR.glob("*.yaml"))
PAPER = ROOT / "models" / "paper-i386-2005.yaml"
MODERN = ROOT / "models" / "modern-x86_64.yaml"


def expectation(path: Path) -> tuple[str, str | None]:
    """(message fragment, dotted field or None) from the file's leading comments."""
    expect, field = None, None
    for line in path.read_bytes().decode("utf-8", "replace").splitlines():
        if not line.startswith("#"):
            break
        key, _, value = line[1:].partition(":")
        if key.strip() == "expect":
            expect = value.strip()
        elif key.strip() == "field":
            field = value.strip()
    assert expect, f"{path.name} has no '# expect:' line"
    return expect, field


def check_error(rc: int, err: str, path: str, fragment: str, field: str | None = None) -> str:
    assert "Traceback" not in err, err
    assert rc == 2, f"exit status {rc}, stderr: {err!r}"
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    line = lines[0]
    assert line.startswith("kdumpsim: error: "), line
    assert path in line, f"{path!r} not named in: {line}"
    if field is not None:
        assert f"{path}: {field}: " in line, f"field {field!r} not named in: {line}"
    assert fragment in line, f"{fragment!r} not in: {line}"
    return line


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    rc = main(list(argv))
    return rc, capsys.readouterr().err


def test_the_corpus_is_large_and_every_file_says_what_it_expects() -> None:
    assert len(CORPUS) >= 40
    for path in CORPUS:
        expectation(path)


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.stem)
def test_validate_rejects_with_one_line(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fragment, field = expectation(path)
    rc, err = run_cli(capsys, "validate", str(path))
    check_error(rc, err, str(path), fragment, field)


RUN_SAMPLE = ["syntax_error_indent", "empty", "unknown_kexec_key", "unknown_device_kind", "cpus_count_string",
              "size_unknown_suffix", "duration_parsecs", "crashkernel_unaligned", "crashkernel_in_hole",
              "crashkernel_too_small", "crashkernel_automatic_2005", "iomem_overlap", "elf32_on_x86_64",
              "placement_no_ram", "append_too_long", "capture_kernel_huge", "driver_init_after_boot"]


@pytest.mark.parametrize("stem", RUN_SAMPLE)
def test_run_rejects_the_same_way(stem: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = CORPUS_DIR / f"{stem}.yaml"
    fragment, field = expectation(path)
    report = tmp_path / "report.json"
    rc, err = run_cli(capsys, "run", str(path), "--quiet", "--report", str(report))
    check_error(rc, err, str(path), fragment, field)
    assert not report.exists()


@pytest.mark.parametrize("stem", ["syntax_error_tab", "unknown_device_key", "crashkernel_over_first_kernel"])
def test_no_traceback_reaches_a_real_terminal(stem: str) -> None:
    path = CORPUS_DIR / f"{stem}.yaml"
    fragment, field = expectation(path)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "kdumpsim", "validate", str(path)],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    check_error(proc.returncode, proc.stderr, str(path), fragment, field)
    assert proc.stdout == ""


# ---------------------------------------------------------------- files that cannot be in the corpus
def test_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = str(tmp_path / "nope.yaml")
    rc, err = run_cli(capsys, "validate", path)
    check_error(rc, err, path, "no such file")
    rc, err = run_cli(capsys, "run", path)
    check_error(rc, err, path, "no such file")


def test_a_directory(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    d = tmp_path / "model.yaml"
    d.mkdir()
    rc, err = run_cli(capsys, "validate", str(d))
    check_error(rc, err, str(d), "is a directory")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    p = tmp_path / "model.yaml"
    p.write_text(PAPER.read_text())
    p.chmod(0)
    rc, err = run_cli(capsys, "validate", str(p))
    check_error(rc, err, str(p), "permission denied")


@pytest.mark.parametrize("text, fragment", [
    ("# nothing\n" * (1 << 20), "file is larger than 4 MiB"),
    ("name: x\ndescription: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
    ("name: x\ndescription: " + "[" * 100 + "]" * 100 + "\n", "nested more than 64 levels"),
    ("name: x\ndescription: &a [*a]\n", "nested more than 64 levels"),
], ids=["huge", "deep-yaml", "deep-data", "self-reference"])
def test_hostile_files(text: str, fragment: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    p = tmp_path / "model.yaml"
    p.write_text(text)
    rc, err = run_cli(capsys, "validate", str(p))
    check_error(rc, err, str(p), fragment)


# ---------------------------------------------------------------- --set
@pytest.mark.parametrize("override, field, fragment", [
    ("devices.nope.start=1s", "devices.nope", "no item named 'nope' in devices; names: eth0"),
    ("devices.eht0.start=1s", "devices.eht0", "(did you mean 'eth0'?)"),
    ("devices.7.start=1s", "devices.7", "index 7 out of range"),
    ("novalue", None, "--set novalue: expected KEY=VALUE"),
    ("=5", None, "--set =5: expected KEY=VALUE"),
    ("devices..start=1s", "devices..start", "empty part in the dotted key"),
    ("timing.captur_boot=5s", "timing.captur_boot", "unknown key 'captur_boot' (did you mean 'capture_boot'?)"),
    ("cpus.count=four", "cpus.count", "expected an integer, got 'four'"),
    ("kexec.crashkernel=32M@0x1080000", "kexec.crashkernel", "is not a multiple of 1 MiB"),
])
def test_set_errors(override: str, field: str | None, fragment: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = run_cli(capsys, "run", str(PAPER), "--quiet", "--set", override)
    check_error(rc, err, str(PAPER), fragment, field)


# ---------------------------------------------------------------- and good files still pass
@pytest.mark.parametrize("path", sorted((ROOT / "models").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_models_validate(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = run_cli(capsys, "validate", str(path))
    assert (rc, err) == (0, "")


def test_friendly_spellings_are_accepted() -> None:
    # era: 2005 unquoted is a YAML integer; crashkernel given as a bare byte count
    from kdumpsim.config.model import load_model
    cfg = load_model(PAPER, ["era=2005", "design=2005"])
    assert (cfg.era, cfg.design) == ("2005", "2005")
    cfg = load_model(MODERN, [f"kexec.crashkernel={256 << 20}"])
    assert cfg.kexec.crashkernel == "268435456"
    cfg = load_model(MODERN, ["devices.nic0.start=-5ms"])       # traffic already running at the panic
    assert cfg.devices[0].start == -5_000_000
