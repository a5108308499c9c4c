"""`kdumpsim recommend` (issue 16 item 2) on a small model with a small budget."""

from __future__ import annotations

from pathlib import Path

from kdumpsim.cli.main import main
from kdumpsim.sweep.recommend import candidates

DATA = Path(__file__).resolve().parent / "data" / "import"


def test_recommend_names_a_command_line(tmp_path: Path, capsys) -> None:
    model = tmp_path / "lab.yaml"
    assert main(["import", "--root", str(DATA / "lab-guest"), "-o", str(model), "--quiet"]) == 0
    assert main(["recommend", str(model), "--runs", "12", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    first = out.splitlines()[0]
    assert first.startswith("recommended  crashkernel=")
    assert "95% Wilson interval" in out and "next best" in out


def test_candidates_cover_placement_iommu_and_nic_drivers(tmp_path: Path) -> None:
    model = tmp_path / "server.yaml"
    assert main(["import", "--root", str(DATA / "server-2s"), "-o", str(model), "--quiet"]) == 0
    cands, _refused = candidates(str(model))
    labels = " | ".join(c.label for c in cands)
    assert "@64M" in labels and "@6G" in labels and "intel_iommu=off" in labels
    assert "with NIC drivers" in labels and "without NIC drivers" in labels


def test_recommend_bad_budget_is_exit_2(tmp_path: Path, capsys) -> None:
    assert main(["recommend", "models/paper-i386-2005.yaml", "--runs", "0"]) == 2
