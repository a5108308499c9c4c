"""`kdumpsim recommend` (issue 16 item 2) on small models with small budgets:
the option table, the two sweeps, the tie-break rule and why the others lose."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from kdumpsim.cli.main import main
from kdumpsim.sweep import recommend as rec
from kdumpsim.sweep.recommend import field_option, option_candidates, reservations

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data" / "import"


@pytest.fixture
def server(tmp_path: Path) -> Path:
    model = tmp_path / "server.yaml"
    assert main(["import", "--root", str(DATA / "server-2s"), "-o", str(model), "--quiet"]) == 0
    return model


def test_recommend_names_a_command_line_and_its_tie_break(tmp_path: Path, capsys) -> None:
    model = tmp_path / "lab.yaml"
    initrd = tmp_path / "initrd-capture.gz"          # the size of the lab's kdump initrd
    initrd.write_bytes(bytes(1763109))
    assert main(["import", "--root", str(DATA / "lab-guest"), "--kdump-initrd", str(initrd), "-o", str(model),
                 "--quiet"]) == 0
    assert main(["recommend", str(model), "--runs", "24", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("recommended  crashkernel=")
    assert "first kernel    crashkernel=" in out and "capture kernel  irqpoll nr_cpus=1 reset_devices" in out
    assert "95% Wilson interval" in out and "next best" in out
    # every candidate ties at 0% on this model: the rule that decides is printed, and followed
    assert "ranked by    failed captures, then fewer damaged dumps, then the smaller reservation" in out
    assert lines[0] == "recommended  crashkernel=128M"
    assert "failed captures 0/" in out            # it holds the capture kernel (with the default 28M initrd it would not)
    # the lab guest's kernel sits at 176-228 MiB (kernel.image): @64M overlaps it and is not run
    assert "crashkernel=128M@64M: does not lay out" in out and "overlaps the running kernel" in out


def test_reservations_cover_high_cma_and_fixed_places(server: Path) -> None:
    cands, _refused = reservations(str(server))
    labels = {c.label for c in cands}
    assert {"crashkernel=256M", "crashkernel=256M,high", "crashkernel=256M@6G",
            "crashkernel=256M crashkernel=256M,cma"} <= labels


def test_options_cover_iommu_drivers_and_reset_devices(server: Path) -> None:
    cands, _refused = reservations(str(server))
    base = next(c for c in cands if c.label == "crashkernel=256M")
    opts, refused, swept = option_candidates(str(server), base)
    assert [o.name for o in swept] == ["iommu", "nic_drivers", "storage_drivers", "reset_devices",
                                         "kexec_method", "collector"]
    assert len(opts) + len(refused) == 64
    labels = " | ".join(c.label for c in opts)
    assert "capture: intel_iommu=off" in labels and "capture: no reset_devices" in labels
    assert "initramfs with nic_rx_ring driver" in labels
    assert "kexec.method=kexec_load" in labels and "capture.collector=dd" in labels
    # the model's own options change nothing
    own = next(c for c in opts if c.label == "crashkernel=256M")
    assert own.changed == 0 and own.overrides["topology.iommu.capture_kernel"] == "copy_tables"


def test_an_option_is_one_line(server: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = next(c for c in reservations(str(server))[0] if c.label == "crashkernel=256M")
    before = option_candidates(str(server), base)[0]
    monkeypatch.setattr(rec, "OPTIONS", rec.OPTIONS + (field_option("notifiers", "kernel.crash_kexec_post_notifiers",
                                                                       (False, True)),))
    after = option_candidates(str(server), base)[0]
    assert len(after) == 2 * len(before)
    assert any("kernel.crash_kexec_post_notifiers=True" in c.label
               and c.overrides["kernel.crash_kexec_post_notifiers"] is True for c in after)


def test_why_names_the_outcome_mechanism_and_region() -> None:
    rows = pd.DataFrame({"outcome": ["capture_kernel_corrupted"] * 3 + ["ok"],
                         "mechanisms": ["iommu_off"] * 2 + ["none", "none"],
                         "dma_hit_bytes_crashkernel": [4096, 0, 0, 0], "dma_hit_bytes_log_buf": [0, 0, 8, 0]})
    bad = rows[rows["outcome"] != "ok"]
    why = rec._why(bad, 4, ["dma_hit_bytes_crashkernel", "dma_hit_bytes_log_buf"])
    assert why == "capture_kernel_corrupted in 2 of 4 runs (mechanism: iommu_off; DMA hit: crashkernel)"


def test_ranking_follows_the_stated_rule() -> None:
    def cand(label: str, size: int, changed: int, placement: int, failed: int = 0, corrupted: int = 0):
        c = rec.Candidate(label, size, placement, {}, changed=changed)
        c.runs, c.failed, c.corrupted = 10, failed, corrupted
        return c
    cands = [cand("fails", 1, 0, 0, failed=1), cand("damaged", 1, 0, 0, corrupted=1), cand("big", 2, 0, 0),
             cand("changed", 1, 1, 0), cand("fixed", 1, 0, 2), cand("best", 1, 0, 0)]
    assert [c.reservation for c in sorted(cands, key=rec.Candidate.rank)] == \
        ["best", "fixed", "changed", "big", "damaged", "fails"]


def test_recommend_bad_budget_is_exit_2(tmp_path: Path, capsys) -> None:
    assert main(["recommend", "models/paper-i386-2005.yaml", "--runs", "0"]) == 2
