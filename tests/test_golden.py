"""Golden timelines: every shipped model with fixed seeds keeps its event
order and times. A change on purpose: `.venv/bin/python -m kdumpsim.sweep.golden --regen`
(`make golden`), then review the diff of tests/golden/ like any other change."""

from __future__ import annotations

import copy
import json

import pytest

from kdumpsim.sweep import golden as golden
from kdumpsim.trace.events import Event

CASES = golden.cases()


def test_every_shipped_model_has_golden_seeds() -> None:
    models = {c.model for c in CASES}
    assert {"paper-i386-2005", "paper-i386-2004", "modern-x86_64"} <= models
    assert all(len([c for c in CASES if c.model == m]) >= 2 for m in models)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_timeline_matches_golden(case: golden.Case) -> None:
    report = golden.check_case(case)
    if report:
        pytest.fail(report, pytrace=False)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_golden_files_stay_small(case: golden.Case) -> None:
    path = case.path()
    assert path.exists(), f"missing {path}: run {golden.REGEN_COMMAND}"
    assert path.stat().st_size < 200_000


# ------------------------------------------------------------ the diff itself
def _golden(events: list[Event], phase: dict[str, int], outcome: str = "ok") -> golden.Golden:
    records, digest = golden.timeline_records(events)
    return golden.Golden({"format": golden.FORMAT, "outcome": outcome, "phase_ns": phase,
                          "dma_details_sha256": digest}, records)


def _events() -> list[Event]:
    return [Event(-10**9, "kexec", "kexec_load", {"segments": 5}),
            Event(0, "cpu0", "panic", {}),
            Event(2000, "cpu1", "nmi_received", {}),
            Event(7000, "cpu1", "halted", {}),
            Event(50_000, "nic0", "dma_write", {"addr": 0x1000, "bytes": 64, "region": "first_kernel_ram"}),
            Event(1_072_000, "purgatory", "purgatory_start", {}),
            Event(1_072_000, "purgatory", "sha256_segment", {"segment": "kernel"}),
            Event(9_000_000, "purgatory", "purgatory_end", {})]


def test_identical_timelines_have_no_diff() -> None:
    g = _golden(_events(), {"purgatory_start": 1_072_000})
    assert golden.diff(g, copy.deepcopy(g)) == []


def test_diff_names_the_first_difference_and_what_moved() -> None:
    before = _events()
    after = [Event(e.time + 12_300 if e.actor == "purgatory" else e.time, e.actor, e.kind, e.details)
             for e in before]
    after.insert(5, Event(60_000, "nic0", "dma_write", {"addr": 0x2000, "bytes": 64, "region": "initrd"}))
    after.insert(6, Event(70_000, "nic0", "dma_write", {"addr": 0x3000, "bytes": 64, "region": "kernel"}))
    report = golden.diff(_golden(before, {"purgatory_start": 1_072_000}),
                         _golden(after, {"purgatory_start": 1_084_300}, outcome="capture_kernel_corrupted"))
    text = "\n".join(report)
    assert "outcome changed: ok -> capture_kernel_corrupted" in text
    assert "first difference at event 5:" in text
    assert '"time_ns":60000' in text and '"kind":"purgatory_start"' in text
    assert "purgatory_start moved +12.3 us" in text
    assert "3 events moved (largest +12.3 us" in text
    assert "2 events added (nic0 dma_write x2)" in text
    assert "DMA addresses/sizes changed" in text


def test_diff_reports_removed_events_and_unreached_phases() -> None:
    before = _events()
    after = before[:5]
    text = "\n".join(golden.diff(_golden(before, {"purgatory_start": 1_072_000}), _golden(after, {})))
    assert "phase purgatory_start no longer reached" in text
    assert "3 events removed" in text
    assert "(no more events)" in text


def test_dma_details_are_digested_not_kept() -> None:
    records, digest = golden.timeline_records(_events())
    w = next(r for r in records if r["kind"] == "dma_write")
    assert w == {"time_ns": 50_000, "actor": "nic0", "kind": "dma_write", "region": "first_kernel_ram"}
    moved = [Event(e.time, e.actor, e.kind, {**e.details, "addr": 0x5000}) if e.kind == "dma_write" else e
             for e in _events()]
    assert golden.timeline_records(moved)[1] != digest


def test_check_reports_a_missing_file(tmp_path) -> None:
    report = golden.check_case(golden.Case("paper-i386-2005", 1), golden_dir=tmp_path)
    assert report and "no golden file" in report and "--regen" in report


def test_regen_then_check_round_trips(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(golden, "SEEDS", (5,))
    written = golden.regenerate(golden_dir=tmp_path)
    assert len(written) == len(golden.cases())
    assert all(golden.check_case(c, golden_dir=tmp_path) is None for c in golden.cases())
    assert golden.main(["--dir", str(tmp_path)]) == 0
    # Tamper with one time: the check fails and says which event.
    path = golden.cases()[0].path(tmp_path)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    i = next(i for i, d in enumerate(lines) if d.get("kind") == "panic")
    lines[i]["time_ns"] += 1
    path.write_text("".join(json.dumps(d) + "\n" for d in lines))
    report = golden.check_case(golden.cases()[0], golden_dir=tmp_path)
    assert report and f"first difference at event {i - 1}:" in report
    assert "1 event moved (largest -1 ns: cpu" in report


def test_a_burst_of_writes_is_one_record_and_still_digested() -> None:
    burst = [Event(1000 + 5 * i, "nvme0", "dma_write", {"addr": 0x10000 + 4096 * i, "bytes": 4096,
                                                        "region": "first_kernel_ram"}) for i in range(4)]
    records, digest = golden.timeline_records(burst)
    assert records == [{"time_ns": 1000, "actor": "nvme0", "kind": "dma_write", "region": "first_kernel_ram",
                        "writes": 4, "until_ns": 1015}]
    moved = [Event(e.time, e.actor, e.kind, {**e.details, "addr": e.details["addr"] + 4096}) for e in burst]
    assert golden.timeline_records(moved)[1] != digest      # where the pages went still counts
