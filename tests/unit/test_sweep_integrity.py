"""Nothing lost, nothing mixed (issue 17 items 1-4, 18): a results directory
belongs to one sweep at a time, a resume continues only the same runs, and a
fresh start deletes only what a sweep wrote."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from kdumpsim.errors import ConfigError
from kdumpsim.sweep.design import load_experiment
from kdumpsim.sweep.results import IDENTITY_KEY, locked
from kdumpsim.sweep.runner import identity, run_experiment

ROOT = Path(__file__).resolve().parents[2]
PAPER = ROOT / "models" / "paper-i386-2005.yaml"


def experiment(tmp: Path, name: str = "tiny", seed: int = 7, replicates: int = 2, model: Path | None = None,
               file: str = "e.yaml") -> Path:
    """One point of the paper's machine (a run takes ~0.05 s)."""
    if model is None:
        model = tmp / "model.yaml"
        if not model.exists():
            shutil.copy(PAPER, model)
    raw = {"name": name, "base": {"model": str(model), "overrides": {"devices.eth0.packet_rate": 2000}},
           "seed": seed, "replicates": replicates, "metrics": ["outcome"]}
    path = tmp / file
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run(exp: Path, out: Path, **kw) -> object:
    return run_experiment(exp, out, workers=1, progress=False, **kw)


def test_a_second_sweep_on_a_locked_directory_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    a, b = experiment(tmp_path, "a", file="a.yaml"), experiment(tmp_path, "b", file="b.yaml", replicates=3)
    run(a, out)
    before = (out / "results.parquet").read_bytes()
    with locked(out), pytest.raises(ConfigError, match="another kdumpsim sweep .* is writing to this directory"):
        run(b, out)
    assert (out / "results.parquet").read_bytes() == before      # the running sweep's files are untouched
    run(b, out)                                                  # once it is done, the directory is free again
    assert len(pq.read_table(out / "results.parquet")) == 3


def test_resume_with_a_changed_model_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    exp = experiment(tmp_path)
    run(exp, out)
    (out / "results.parquet").unlink()
    model = tmp_path / "model.yaml"
    model.write_text(model.read_text().replace("count: 4", "count: 2"))
    with pytest.raises(ConfigError, match="the model changed since the run"):
        run(exp, out, resume=True)


def test_parts_of_another_sweep_are_refused_without_a_manifest(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run(experiment(tmp_path, seed=1), out)
    (out / "manifest.json").unlink()
    with pytest.raises(ConfigError, match="written by another sweep"):
        run(experiment(tmp_path, seed=2), out, resume=True)


def test_a_row_for_a_point_the_experiment_does_not_have_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    exp = experiment(tmp_path)
    run(exp, out)
    ident = identity(load_experiment(exp))["identity"].encode()
    table = pa.table({"point": pa.array([999], pa.int64()), "replicate": pa.array([0], pa.int64()),
                      "seed": pa.array([1], pa.uint64())}).replace_schema_metadata({IDENTITY_KEY: ident})
    pq.write_table(table, out / "parts" / "part-000999-00000-deadbeef.parquet")
    with pytest.raises(ConfigError, match="names a point this experiment does not have"):
        run(exp, out, resume=True)


def test_a_row_with_another_seed_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    exp = experiment(tmp_path)
    run(exp, out)
    part = sorted((out / "parts").glob("part-*.parquet"))[0]
    t = pq.read_table(part)
    t = t.set_column(t.schema.get_field_index("seed"), "seed", pa.array([5] * len(t), pa.uint64()))
    pq.write_table(t, part)
    with pytest.raises(ConfigError, match="has another seed"):
        run(exp, out, resume=True)


@pytest.mark.parametrize("name", [".", ".."])
def test_dot_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="not a name"):
        load_experiment(experiment(tmp_path, name))


def test_a_fresh_start_keeps_files_a_sweep_did_not_write(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "summary.csv").write_text("my own data\n")
    with pytest.raises(ConfigError, match="no manifest.json of a kdumpsim sweep"):
        run(experiment(tmp_path), out)
    assert (out / "summary.csv").read_text() == "my own data\n"


@pytest.mark.parametrize("content", [b"", b"PAR1garbage", b"\x00" * 100], ids=["empty", "truncated", "binary"])
def test_a_damaged_part_is_one_line(tmp_path: Path, content: bytes) -> None:
    out = tmp_path / "out"
    exp = experiment(tmp_path)
    run(exp, out)
    (out / "parts" / "part-000000-00000-00000000.parquet").write_bytes(content)
    with pytest.raises(ConfigError, match="damaged part file"):
        run(exp, out, resume=True)


def test_a_part_of_another_schema_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    exp = experiment(tmp_path)
    run(exp, out)
    pq.write_table(pa.table({"x": [1]}), out / "parts" / "part-000000-00000-00000000.parquet")
    with pytest.raises(ConfigError, match="not a part file"):
        run(exp, out, resume=True)


@pytest.mark.parametrize("manifest", [b'{"experiment_sha256": null}', b"\xff\xfe\x00binary", b"[1, 2]"])
def test_a_damaged_manifest_does_not_stop_a_resume(tmp_path: Path, manifest: bytes) -> None:
    out = tmp_path / "out"
    exp = experiment(tmp_path)
    run(exp, out)
    (out / "manifest.json").write_bytes(manifest)
    res = run(exp, out, resume=True)
    assert res.manifest["runs_this_session"] == 0
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"


@pytest.mark.slow
def test_two_concurrent_sweeps_on_one_out(tmp_path: Path) -> None:
    """The hostile-use case: sweep B started while A writes the same --out is
    refused (exit 2, one line); A finishes with its own rows only."""
    import subprocess
    import sys
    import time
    out = tmp_path / "out"
    a = experiment(tmp_path, "a", file="a.yaml", replicates=200)
    b = experiment(tmp_path, "b", file="b.yaml", replicates=3)
    cli = [sys.executable, "-m", "kdumpsim", "experiment"]
    proc = subprocess.Popen([*cli, str(a), "--out", str(out), "--workers", "1", "--chunk-size", "5",
                             "--no-progress"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not list((out / "parts").glob("part-*.parquet")):
            time.sleep(0.05)
        r = subprocess.run([*cli, str(b), "--out", str(out), "--no-progress"], cwd=ROOT, capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 2 and "another kdumpsim sweep" in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert proc.wait(timeout=300) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    table = pq.read_table(out / "results.parquet")
    assert len(table) == 200 and json.loads((out / "manifest.json").read_text())["name"] == "a"


def test_workers_are_bounded(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="more than 256"):
        run_experiment(experiment(tmp_path), tmp_path / "out", workers=100000, progress=False)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- a run that raises (item 17)
def _raise_on(monkeypatch: pytest.MonkeyPatch, bad_seed: int, exc: BaseException) -> None:
    """run_record raises `exc` for the run of `bad_seed` (inline executor: same process)."""
    import kdumpsim.measure.record as record
    real = record.run_record

    def fake(run):
        if run.seed == bad_seed:
            raise exc
        return real(run)
    monkeypatch.setattr(record, "run_record", fake)


def test_a_run_that_raises_is_a_row_naming_its_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    exp = experiment(tmp_path, replicates=4)
    spec = load_experiment(exp).runs()[2]
    _raise_on(monkeypatch, spec.seed, ZeroDivisionError("division by zero"))
    res = run(exp, tmp_path / "out", chunk_size=4)
    df = res.table
    assert len(df) == 4 and (df["outcome"] == "error").sum() == 1      # the chunk's other runs are kept
    err = df.loc[df["outcome"] == "error", "error"].iloc[0]
    assert err.startswith(f"point 0 (base) replicate 2 seed {spec.seed}: ZeroDivisionError: division by zero "
                          "(at "), err
    assert "re-run it alone with: kdumpsim run" in capsys.readouterr().err


def test_a_layout_error_mid_chunk_keeps_the_runs_before_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kdumpsim.errors import LayoutError
    out = tmp_path / "out"
    exp = experiment(tmp_path, replicates=4)
    spec = load_experiment(exp).runs()[2]
    _raise_on(monkeypatch, spec.seed, LayoutError("devices.eth0", "more than 1000 DMA writes"))
    with pytest.raises(ConfigError, match=f"point 0 \\(base\\) replicate 2 seed {spec.seed}: devices.eth0: more "
                                          "than 1000 DMA writes \\(3 of 4 runs are saved in .*--resume\\)"):
        run(exp, out, chunk_size=4)
    assert len(pq.read_table(out / "parts")) == 3


def test_a_full_disk_while_keeping_a_vmcore_keeps_the_finished_runs(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from kdumpsim.errors import SweepStopped
    from kdumpsim.sweep import executors
    out = tmp_path / "out"
    exp = experiment(tmp_path, replicates=3)
    raw = yaml.safe_load(exp.read_text())
    raw["axes"] = [{"key": "devices.eth0.start", "values": ["0ms", "1ms"]}]
    raw["vmcores"] = "first"
    exp.write_text(yaml.safe_dump(raw))

    def full(chunk, r, run):
        if r.point == 1:
            raise OSError(errno.ENOSPC, "No space left on device", str(out / "vmcores" / "point-00001.vmcore"))
        return None
    monkeypatch.setattr(executors, "_keep_vmcore", full)
    with pytest.raises(SweepStopped, match="point-00001.vmcore: No space left on device .*point 1 .*3 of 6 runs "
                                           "are saved .*--resume"):
        run(exp, out, chunk_size=6)
    assert len(pq.read_table(out / "parts")) == 3
