"""The qemu-tcg timing profile (`timing.profile: qemu-tcg`) against the real lab runs:
the predicted capture timeline (capture kernel start, its /init, the dump's start)
falls inside the band the runs measured (tests/lab/data, kdumpsim/lab/data/qemu-tcg-profile.yaml)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdumpsim.config.model import model_from_dict
from kdumpsim.lab import predict as pred
from kdumpsim.measure import simulate

DATA = Path(__file__).resolve().parent / "data"
RUNS = sorted(p.name for p in DATA.iterdir() if (p / "result.json").is_file())


def _band() -> dict[str, tuple[float, float]]:
    """min..max over the measured runs of each capture-timeline phase, seconds from the panic."""
    phases: dict[str, list[float]] = {"capture_kernel_start": [], "capture_init": [], "dump_start": []}
    for name in RUNS:
        ph = json.loads((DATA / name / "result.json").read_text())["phases_s"]
        for k in phases:
            phases[k].append(ph[k])
    return {k: (min(v), max(v)) for k, v in phases.items()}


@pytest.mark.parametrize("name", RUNS)
def test_qemu_tcg_profile_predicts_inside_the_measured_band(name):
    result = json.loads((DATA / name / "result.json").read_text())
    record = json.loads((DATA / name / "run.json").read_text())
    model = pred.export_model(result, record, timing="profile")
    probe = model["devices"][0].pop("probe_at", None)
    model["timing"] = {"profile": "qemu-tcg"}                 # the named profile, no explicit times
    if probe is not None:
        model["devices"][0]["probe_at"] = probe
    run = simulate(model_from_dict(model), 0)
    assert run.timing.profile == "qemu-tcg" and run.outcome in ("ok", "ok_dump_corrupted"), run.outcome
    got = {"capture_kernel_start": run.phase["capture_boot_start"] / 1e9,
           "capture_init": run.phase["capture_boot_end"] / 1e9,
           "dump_start": run.phase["dump_start"] / 1e9}
    for phase, (lo, hi) in _band().items():
        assert lo <= got[phase] <= hi, f"{phase}: predicted {got[phase]:.3f} s outside the measured {lo:.3f}-{hi:.3f} s"
