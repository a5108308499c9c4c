"""Fleets (issue #16): an experiment axis over model files, one machine per
value; the summary gives each machine's rates, rerun commands name the
machine's file, seeds stay per point, errors name the file and field, and
--resume refuses when any machine's model file changed."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import pandas as pd
import pytest
import yaml

from kdumpsim.cli.main import main
from kdumpsim.errors import ConfigError
from kdumpsim.sweep.design import load_experiment, models_sha256, run_seed
from kdumpsim.sweep.runner import run_experiment

ROOT = Path(__file__).resolve().parents[1]
FLEET = ROOT / "experiments" / "fleet.yaml"
M2004 = ROOT / "models" / "paper-i386-2004.yaml"
M2005 = ROOT / "models" / "paper-i386-2005.yaml"


def fleet(tmp: Path, models: list[str], **changes: object) -> Path:
    raw = yaml.safe_load(FLEET.read_text())
    raw["axes"][0]["models"] = models
    raw.update(changes)
    path = tmp / "fleet.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_fleet_points_and_seeds() -> None:
    exp = load_experiment(FLEET)
    assert [m.ref for m in exp.models] == ["models/paper-i386-2004.yaml", "models/paper-i386-2005.yaml"]
    assert [(p.display["machine"], p.model) for p in exp.points] == [
        ("paper-i386-2004", 0), ("paper-i386-2004", 0), ("paper-i386-2005", 1), ("paper-i386-2005", 1)]
    # the same overrides on two machines are two points with their own seeds
    assert exp.points[0].overrides == exp.points[2].overrides
    assert run_seed(16, exp.points[0], 0) != run_seed(16, exp.points[2], 0)
    assert exp.model_for(0).design == "2004" and exp.model_for(2).design == "2005"
    # base.overrides reach every machine
    assert all(exp.model_for(p.index).devices[0].placement.mode == "range" for p in exp.points)


@pytest.mark.slow
def test_fleet_summary_per_machine_and_rerun(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    res = run_experiment(FLEET, tmp_path / "out", workers=1, progress=False)
    out = capsys.readouterr().out
    df = res.table
    rates = df.groupby("machine")["outcome"].apply(lambda s: (~s.isin(["ok", "ok_dump_corrupted"])).mean())
    # the 2004 design loses its capture kernel to DMA at the panic; the 2005 one does not
    assert rates["paper-i386-2004"] > 0 and rates["paper-i386-2005"] == 0
    assert "capture_failure by machine: paper-i386-2004" in out
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert set(summary["machine"]) == {"paper-i386-2004", "paper-i386-2005"}
    per = pd.read_csv(tmp_path / "out" / "summary_by_machine.csv")
    assert list(per["machine"]) == ["paper-i386-2004", "paper-i386-2005"] and list(per["runs"]) == [20, 20]
    assert per["capture_failure"].tolist() == [rates["paper-i386-2004"], rates["paper-i386-2005"]]
    assert "Summary per machine" in (tmp_path / "out" / "report.html").read_text()
    assert "per machine (over every other axis" in out
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["models"] == ["models/paper-i386-2004.yaml", "models/paper-i386-2005.yaml"]
    # a row's rerun command names its machine's model file and re-creates it
    row = df[(df["machine"] == "paper-i386-2004") & (df["dma_start"] == 0)].iloc[0]
    argv = shlex.split(row["rerun"])
    assert argv[2] == "models/paper-i386-2004.yaml"
    report = tmp_path / "run.json"
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        assert main(argv[1:] + ["--report", str(report), "--quiet"]) == 0
    finally:
        os.chdir(cwd)
    assert json.loads(report.read_text())["outcome"] == row["outcome"]


def test_fleet_digest_covers_every_machine(tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(M2004.read_text())
    b.write_text(M2005.read_text())
    f = fleet(tmp_path, [str(a), str(b)])
    before = models_sha256(load_experiment(f))
    b.write_text(M2005.read_text().replace("count: 4", "count: 2", 1))
    assert models_sha256(load_experiment(f)) != before


@pytest.mark.slow
def test_resume_refuses_a_changed_machine(tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(M2004.read_text())
    b.write_text(M2005.read_text())
    f = fleet(tmp_path, [str(a), str(b)], replicates=1, plots=[])
    out = tmp_path / "out"
    assert main(["experiment", str(f), "--out", str(out), "--no-progress"]) == 0
    b.write_text(M2005.read_text().replace("count: 4", "count: 2", 1))
    with pytest.raises(ConfigError, match="a model of the fleet changed since the run"):
        run_experiment(f, out, workers=1, resume=True, progress=False)


@pytest.mark.parametrize("change,field,fragment", [
    ({"models": ["models/paper-i386-2004.yaml", "models/nope.yaml"]}, "axes.0.models.1", "no such model file"),
    ({"models": ["models/paper-i386-2004.yaml", "models/paper-i386-2004.yaml"]}, "axes.0.models",
     "duplicate model file"),
    ({"key": "design"}, "axes.0.key", "takes a name and the model files only"),
    ({"name": None}, "axes.0.name", "fleet axis needs a column name"),
])
def test_fleet_axis_errors(tmp_path: Path, change: dict, field: str, fragment: str) -> None:
    raw = yaml.safe_load(FLEET.read_text())
    raw["axes"][0].update(change)
    raw["axes"][0] = {k: v for k, v in raw["axes"][0].items() if v is not None}
    path = tmp_path / "f.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(ConfigError) as e:
        load_experiment(path)
    assert e.value.source == str(path) and e.value.field == field and fragment in e.value.message


def test_fleet_errors_name_the_machine(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(M2005.read_text().replace("count: 4", "count: four", 1))
    with pytest.raises(ConfigError) as e:
        load_experiment(fleet(tmp_path, [str(M2004), str(bad)]))
    assert e.value.field.startswith("axes.0.models.1") and "cpus.count" in e.value.field
    # an axis key the second machine lacks: the axis value and the machine's file are named
    other = tmp_path / "other.yaml"
    other.write_text(M2005.read_text().replace("eth0", "eth1"))
    with pytest.raises(ConfigError) as e:
        load_experiment(fleet(tmp_path, [str(M2004), str(other)], base={}))
    assert e.value.field.startswith("axes.1.values.0") and str(other.name) in e.value.message
    # base.model and a fleet together
    with pytest.raises(ConfigError) as e:
        load_experiment(fleet(tmp_path, [str(M2004)], base={"model": str(M2005)}))
    assert e.value.field == "base.model"
