"""CI ergonomics (issue 16 item 4): --fail-on, run --json, validate --set,
`kdumpsim golden`, run --vmcore's free-space check."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest

from kdumpsim.cli.main import EXIT_FAIL_ON, main

ROOT = Path(__file__).resolve().parents[1]
PAPER = str(ROOT / "models" / "paper-i386-2005.yaml")   # seed 0: ok_dump_corrupted
MODERN = str(ROOT / "models" / "modern-x86_64.yaml")


def test_fail_on_sets_exit_status_3_when_the_outcome_matches(capsys) -> None:
    assert main(["run", PAPER, "--quiet", "--fail-on", "ok_dump_corrupted"]) == EXIT_FAIL_ON == 3
    assert main(["run", PAPER, "--quiet", "--fail-on", "ok,ok_dump_corrupted"]) == 3
    assert main(["run", PAPER, "--quiet", "--fail-on", "ok", "--fail-on", "ok_dump_corrupted"]) == 3


def test_fail_on_passes_when_the_outcome_is_not_listed(capsys) -> None:
    assert main(["run", PAPER, "--quiet", "--fail-on", "failed"]) == 0
    assert main(["run", PAPER, "--quiet", "--fail-on", "purgatory_mismatch,vmcore_unavailable"]) == 0


def test_fail_on_failed_names_every_failed_capture() -> None:
    from kdumpsim.cli.main import fail_on_outcomes
    from kdumpsim.names import CAPTURE_OK, OUTCOMES
    assert fail_on_outcomes(["failed"]) == set(OUTCOMES) - set(CAPTURE_OK)


def test_fail_on_unknown_outcome_is_one_line_exit_2_with_did_you_mean(capsys) -> None:
    assert main(["run", PAPER, "--fail-on", "ok_dump_corupted"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did you mean 'ok_dump_corrupted'" in err and "Traceback" not in err
    assert main(["run", PAPER, "--fail-on", "ok,"]) == 2


def test_run_json_prints_the_report_on_stdout(capsys) -> None:
    assert main(["run", PAPER, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["outcome"] == "ok_dump_corrupted" and report["model"] == "paper-i386-2005"


def test_run_json_with_fail_on_still_prints_json() -> None:
    proc = subprocess.run([sys.executable, "-m", "kdumpsim", "run", PAPER, "--json", "--fail-on", "ok_dump_corrupted"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3
    assert json.loads(proc.stdout)["outcome"] == "ok_dump_corrupted"
    assert "exit status 3" in proc.stderr


def test_validate_takes_set(capsys) -> None:
    assert main(["validate", MODERN, "--set", "kexec.crashkernel=512M"]) == 0
    assert "512M at" in capsys.readouterr().out
    assert main(["validate", MODERN, "--set", "kexec.crashkernl=512M"]) == 2
    err = capsys.readouterr().err
    assert "kexec.crashkernl" in err and "did you mean 'crashkernel'" in err


def test_vmcore_refused_when_the_disk_is_too_small(tmp_path: Path, monkeypatch, capsys) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: usage(1 << 30, 1 << 30, 1 << 20))
    out = tmp_path / "vmcore"
    assert main(["run", MODERN, "--vmcore", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "8.00 GiB" in err and "1.0 MiB free" in err
    assert not out.exists()


def test_vmcore_says_how_big_it_will_be(tmp_path: Path, capsys) -> None:
    out = tmp_path / "vmcore"
    assert main(["run", PAPER, "--vmcore", str(out)]) == 0
    err = capsys.readouterr().err
    assert "vmcore: up to" in err and "MiB" in err
    assert 0 < out.stat().st_size < 2**30


@pytest.fixture
def golden_dirs(tmp_path: Path) -> tuple[Path, Path]:
    models = tmp_path / "my models"
    models.mkdir()
    shutil.copy(PAPER, models / "paper-i386-2005.yaml")
    return models, tmp_path / "goldens"


def test_golden_subcommand_regen_then_check(golden_dirs, capsys) -> None:
    models, gdir = golden_dirs
    assert main(["golden", "--regen", "--models", str(models), "--dir", str(gdir)]) == 0
    assert len(list(gdir.glob("*.jsonl"))) == 3
    assert main(["golden", "--check", "--models", str(models), "--dir", str(gdir)]) == 0
    assert "ok  paper-i386-2005-seed1" in capsys.readouterr().out


def test_golden_mismatch_hint_repeats_models_and_dir(golden_dirs, capsys) -> None:
    models, gdir = golden_dirs
    assert main(["golden", "--regen", "--models", str(models), "--dir", str(gdir)]) == 0
    capsys.readouterr()
    # the model changes on purpose: its timeline moves
    text = (models / "paper-i386-2005.yaml").read_text()
    (models / "paper-i386-2005.yaml").write_text(text + "timing:\n  machine_kexec: 250us\n")
    assert main(["golden", "--models", str(models), "--dir", str(gdir)]) == 1
    out = capsys.readouterr().out
    assert f"kdumpsim golden --regen --models '{models}' --dir {gdir}" in out


def test_golden_bad_directories_are_one_line_errors(tmp_path: Path, capsys) -> None:
    assert main(["golden", "--models", str(tmp_path / "none")]) == 2
    assert main(["golden", "--models", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and "no *.yaml" in err
