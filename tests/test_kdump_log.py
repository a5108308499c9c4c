"""`kdumpsim import --kdump-log FILE` (issue #16): a capture kernel's boot log
sets the capture timing and each device's probe time, with provenance; the
model validates and runs with them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kdumpsim.cli.main import main
from kdumpsim.config.model import load_model, validate_model
from kdumpsim.errors import ConfigError
from kdumpsim.importer.host import check, import_tree
from kdumpsim.importer.kdumplog import parse_boot

DATA = Path(__file__).resolve().parent / "data"
LAB = DATA / "import" / "lab-guest"
LOGS = DATA / "kdump-log"


def test_lab_console_capture_boot() -> None:
    """The serial console holds both kernels: the capture kernel's boot is used."""
    imp = import_tree(LAB, kdump_log=LOGS / "lab-e1000-driver.serial.log")
    t = imp.raw["timing"]
    # the lines of the capture kernel's boot (its Run /init is at 2.073335 s, the first kernel's at 2.6 s)
    assert t == {"capture_boot": "2073335us", "vmcore_init": "1079549us", "iommu_init": "1248216us",
                 "driver_init": "2073335us", "dump_start_delay": "876665us"}
    eth0 = imp.raw["devices"][0]
    assert eth0["probe_at"] == "2763603us" and eth0["capture_driver"] is True
    text = imp.yaml_text
    assert "line 793: 'Run /init as init process'" in text and "e1000 0000:00:03.0 eth0" in text
    assert check(imp) is None
    cfg = validate_model(yaml.safe_load(text), "<imported>")
    assert cfg.timing.capture_boot == 2_073_335_000 and cfg.devices[0].probe_at == 2_763_603_000


def test_no_driver_line_means_no_driver_in_the_initramfs() -> None:
    imp = import_tree(LAB, kdump_log=LOGS / "lab-e1000-nodriver.capture.log")
    eth0 = imp.raw["devices"][0]
    assert eth0["capture_driver"] is False and "probe_at" not in eth0
    assert "the kdump initramfs does not load it" in imp.yaml_text


def test_first_kernel_dmesg_stands_in_and_says_so(tmp_path: Path) -> None:
    out = tmp_path / "m.yaml"
    assert main(["import", "--root", str(LAB), "--kdump-log", str(LOGS / "real-6.1-dmesg-to-init.txt"),
                 "-o", str(out), "--quiet"]) == 0
    text = out.read_text()
    assert 'capture_boot: "1806269us"' in text and "standing in for the capture kernel's: assumption" in text
    assert "not a capture kernel's" in text
    # no device probe without elfcorehdr: capture_driver is not guessed
    assert "capture_driver" not in text
    assert main(["run", str(out), "--quiet"]) == 0
    assert load_model(out).timing.vmcore_init == 877_157_000


def test_bad_logs_name_the_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.log"
    empty.write_text("hello\n[ 1.0] no banner\n")
    with pytest.raises(ConfigError) as e:
        import_tree(LAB, kdump_log=empty)
    assert e.value.source == str(empty) and "not a kernel boot log" in e.value.message
    cut = tmp_path / "cut.log"
    cut.write_text("[    0.000000] Linux version 6.1\n[    0.000000] Command line: elfcorehdr=1K\n")
    with pytest.raises(ConfigError) as e:
        import_tree(LAB, kdump_log=cut)
    assert e.value.field == "timing.capture_boot"
    assert main(["import", "--root", str(LAB), "--kdump-log", str(tmp_path / "nope.log"), "--quiet"]) == 2


def test_the_last_capture_boot_is_chosen() -> None:
    text = ("[    0.000000] Linux version A\n[    0.000000] Command line: ro\n[    3.0] Run /init as init process\n"
            "[    0.000000] Linux version B\n[    0.000000] Command line: elfcorehdr=5K\n"
            "[    1.5] Run /init as init process\n")
    boot = parse_boot(text, "x")
    assert boot.capture and boot.find("Run /init") == (1.5, 6)
