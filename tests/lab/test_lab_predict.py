"""lab predict and compare on measured results (tests/lab/data: result.json of
real lab runs of 2026-11-30, and the `times` of their run.json; no RAM images).

predict: the lab machine exported as a kdumpsim model (memory map, the
reservation, the NIC with its ring size, free descriptors at the panic, rate,
frame length, capture driver, timing), simulated with seed 0.
compare: the tolerance rules (counts 10 %, stop reason equal, times 30 %).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from kdumpsim.config.model import model_from_dict
from kdumpsim.lab import LabError
from kdumpsim.lab import compare as cmp
from kdumpsim.lab import predict as pred

DATA = Path(__file__).resolve().parent / "data"
RUNS = sorted(p.name for p in DATA.iterdir() if (p / "result.json").is_file())


def _load(name: str) -> tuple[dict, dict]:
    return (json.loads((DATA / name / "result.json").read_text()),
            json.loads((DATA / name / "run.json").read_text()))


def test_profile_values_are_the_medians_of_their_runs():
    prof = pred.load_profile()
    assert prof["capture_kernel_start"] == pytest.approx(4.136)
    assert prof["dump_throughput"] == pytest.approx(66.8)
    data = yaml.safe_load(pred.PROFILE.read_text())
    for entry in data["values"].values():
        assert entry["measured"], "every value names the runs it was measured in"
        assert all("run" in m and "date" in m for m in entry["measured"])


def test_profile_refuses_a_value_that_is_not_its_runs_median(tmp_path):
    data = yaml.safe_load(pred.PROFILE.read_text())
    data["values"]["capture_boot"]["value"] = 9.0
    bad = tmp_path / "p.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(LabError, match="capture_boot"):
        pred.load_profile(bad)


def test_export_e1000_nodriver():
    result, record = _load("e1000-nodriver-200pps")
    m = pred.export_model(result, record)
    assert m["arch"] == "x86_64" and m["era"] == "modern" and m["cpus"] == {"count": 1}
    assert m["memory"]["iomem"] == ["00001000-0009fbff : System RAM", "00100000-1ffdcfff : System RAM"]
    assert m["kexec"]["crashkernel"] == "160M@0x15000000"
    (dev,) = m["devices"]
    assert dev["kind"] == "nic_rx_ring" and dev["descriptors"] == 256 and dev["posted"] == 254
    assert dev["packet_rate"] == 200 and dev["packet_size"] == 256 and dev["capture_driver"] is False
    assert dev["arrivals"] == "periodic" and "probe_at" not in dev
    assert m["timing"]["machine_kexec"] == "3963000us"        # panic -> capture kernel start (before fitting)
    assert m["timing"]["capture_boot"] == "1969000us"
    cfg = model_from_dict(m)
    assert cfg.devices[0].posted == 254


def test_export_driver_and_virtio_probe_times():
    result, record = _load("e1000-driver-10pps")
    dev = pred.export_model(result, record)["devices"][0]
    assert dev["capture_driver"] is True
    assert dev["probe_at"] == "2055000us"              # nic_driver_load - capture_kernel_start
    result, record = _load("virtio-net-virtio-disk")
    dev = pred.export_model(result, record)["devices"][0]
    assert dev["kind"] == "virtio_net" and dev["queue_size"] == 256 and dev["posted"] == 228
    assert dev["virtio_pci"] is True and dev["probe_at"] == "2364000us"     # virtio_pci, loaded for the disk
    prof = pred.export_model(result, record, timing="profile")
    assert prof["devices"][0]["probe_at"] == "2022000us"                  # the profile's disk_driver_probe


def test_export_refuses_the_iommu_scenario():
    result, record = _load("e1000-nodriver-200pps")
    result = {**result, "scenario": {**result["scenario"], "iommu": True}}
    with pytest.raises(LabError, match="IOMMU"):
        pred.export_model(result, record)


@pytest.mark.parametrize("name", RUNS)
def test_predict_then_compare_within_tolerance_counts(name, tmp_path):
    """On every stored run the model's counts and stop reason are within tolerance."""
    rundir = tmp_path / name
    shutil.copytree(DATA / name, rundir)
    predicted = pred.predict(rundir)
    assert (rundir / "model.yaml").is_file() and (rundir / "predicted.json").is_file()
    assert predicted["model"] == "model.yaml"
    # the capture kernel starts when measured (the model's own crash path is fitted into machine_kexec)
    result = json.loads((rundir / "result.json").read_text())
    assert predicted["phases_s"]["capture_kernel_start"] == pytest.approx(
        result["phases_s"]["capture_kernel_start"], abs=0.002)
    _, text, rows = cmp.compare(rundir)
    counts = [r for r in rows if "(profile)" not in r.figure]
    # with every buffer address measured (placement given), the page sets are compared too
    has_addrs = "addrs" in result["rx_buffers"]
    assert len(counts) == (5 if has_addrs else 4) and all(r.ok for r in counts), text


def test_compare_fails_the_virtio_run_on_profile_times(tmp_path):
    """That run shared the host with another job: its capture kernel started at
    6.44 s against the profile's 4.14 s, outside the +-30 % band."""
    rundir = tmp_path / "v"
    shutil.copytree(DATA / "virtio-net-virtio-disk", rundir)
    pred.predict(rundir)
    ok, _, rows = cmp.compare(rundir)
    assert not ok
    bad = {r.figure for r in rows if not r.ok}
    assert "capture_kernel_start (profile)" in bad
    assert not any(r.figure.startswith(("post-panic", "dumped pages", "old DMA")) for r in rows if not r.ok)


def test_tolerance_rules():
    assert cmp.within(100, 110, 0.10) and cmp.within(100, 90, 0.10)
    assert not cmp.within(100, 111, 0.10) and not cmp.within(100, 89, 0.10)
    assert not cmp.within(None, 5, 0.1) and not cmp.within(5, None, 0.1)
    assert cmp.within(4.0, 5.2, 0.30) and not cmp.within(4.0, 5.3, 0.30)
    assert cmp.stop_equal("ring_exhausted", "ring_exhausted")
    assert cmp.stop_equal("traffic_ended", "running_at_end")
    assert not cmp.stop_equal("driver_reset", "ring_exhausted")
    assert not cmp.stop_equal("virtio_pci_reset", "driver_reset")
    assert not cmp.stop_equal(None, "ring_exhausted")


def test_compare_checks_each_figure():
    result = {"scenario": {"name": "x"}, "post_panic": {"landed_old_ring": 100, "in_vmcore": 100},
              "pages": {"classes": {"payload": 40, "ring": 1, "cpu": 30}},
              "dma_stop": {"reason": "driver_reset", "last_landed_send_s": 6.0},
              "phases_s": {"capture_kernel_start": 4.0, "dump_start": 7.0}}
    predicted = {"post_panic": {"landed_old_ring": 89, "in_vmcore": 100},
                 "pages": {"dma_changed": 41}, "dma_stop": {"reason": "driver_reset"},
                 "profile": {"phases_s": {"capture_kernel_start": 5.3, "dump_start": 7.0},
                             "dma_stop": {"last_landed_s": 6.1}}}
    rows = {r.figure: r.ok for r in cmp.checks(result, predicted)}
    assert rows == {"post-panic frames landed in the old ring": False,       # 89 vs 100: 11 % off
                    "post-panic frames in the vmcore": True,
                    "dumped pages changed by DMA (payload+ring)": True,       # cpu pages are not DMA
                    "old DMA stop reason": True,
                    "capture_kernel_start (profile)": False,                  # 5.3 vs 4.0: 32 %
                    "dump_start (profile)": True,
                    "last frame landed at, s (profile)": True}


def test_cli_predict_and_compare_exit_status(tmp_path, capsys):
    from kdumpsim.cli import main
    rundir = tmp_path / "a"
    shutil.copytree(DATA / "e1000-nodriver-200pps", rundir)
    assert main(["lab", "predict", str(rundir)]) == 0
    assert main(["lab", "compare", str(rundir)]) == 0
    out = capsys.readouterr().out
    assert "| post-panic frames landed in the old ring | 254 | 254 | 10% | ok |" in out
    v = tmp_path / "v"
    shutil.copytree(DATA / "virtio-net-virtio-disk", v)
    assert main(["lab", "compare", "--predict", str(v)]) == 1
    assert main(["lab", "compare", str(tmp_path / "missing")]) == 2
    capsys.readouterr()
    assert main(["lab", "compare", "--summary", str(rundir), str(tmp_path / "missing")]) == 2   # a run that failed
    err = capsys.readouterr().err
    assert err.startswith("lab: error: no result.json in ") and "Traceback" not in err


def test_given_addresses_reproduce_the_measured_page_set(tmp_path):
    """e1000-nodriver-200pps re-measured with every buffer address: the model with
    the buffers at those addresses changes exactly the measured dumped pages."""
    rundir = tmp_path / "a"
    shutil.copytree(DATA / "e1000-nodriver-200pps", rundir)
    predicted = pred.predict(rundir)
    model = yaml.safe_load((rundir / "model.yaml").read_text())
    dev = model["devices"][0]
    assert dev["placement"]["mode"] == "given" and len(dev["placement"]["addresses"]) == 254
    assert dev["placement"]["rings"] == ["0x27d2000"]
    assert model["kernel"]["image"] == [["0xb000000", "0xbe01d32"], ["0xc000000", "0xc8eb000"], ["0xca00000", "0xcc48980"]]
    result = json.loads((rundir / "result.json").read_text())
    assert predicted["pages"]["dma_pages"] == result["pages"]["dma_pages"]
    ok, text, rows = cmp.compare(rundir)
    assert ok, text
    assert any(r.figure.startswith("DMA-changed dumped pages: pages not in both") and r.predicted == 0 for r in rows)


def _given_model(addresses: list[int], **placement) -> dict:
    result, record = _load("e1000-nodriver-200pps")
    m = pred.export_model(result, record)
    m["devices"][0]["placement"] = {"mode": "given", "addresses": addresses, **placement}
    return m


@pytest.mark.parametrize("addr, why", [
    (0x16000000, "crashkernel reservation"),      # inside 0x15000000-0x1effffff
    (0xB100000, "kernel image"),                  # the lab kernel's code
    (0x80000, "low 1 MiB"),
    (0x30000000, "not in System RAM"),            # above the 512 MiB guest
])
def test_given_addresses_refused_where_the_allocator_could_not_give(addr, why):
    from kdumpsim.errors import LayoutError
    m = _given_model([0x1FE30FC0, addr])
    with pytest.raises(LayoutError, match=why) as exc:
        pred.simulate_model(m)
    assert exc.value.field == "devices.0.placement.addresses.1"


def test_given_addresses_are_filled_in_order():
    m = _given_model([0x1FE30FC0, 0x1FE30840, 0x1FE300C0])
    m["devices"][0].pop("posted")                 # default N-2, capped at the 3 given
    _, run = pred.simulate_model(m)
    eng = run.engines[0]
    assert [b.phys for b in eng.buffers] == [0x1FE30FC0, 0x1FE30840, 0x1FE300C0]
    writes = [w.addr for w in run.machine.memory.log if w.actor == "nic0" and w.length == 256]
    assert writes == [0x1FE30FC0, 0x1FE30840, 0x1FE300C0]
    assert eng.stop_reason == "ring_exhausted"


def test_given_placement_schema():
    from kdumpsim.errors import ConfigError
    m = _given_model([])
    with pytest.raises(ConfigError, match="addresses"):
        model_from_dict(m)
    m = _given_model([0x1FE30FC0])
    m["devices"][0]["placement"] = {"mode": "allocator", "addresses": [0x1FE30FC0]}
    with pytest.raises(ConfigError, match="given"):
        model_from_dict(m)
