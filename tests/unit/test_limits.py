"""The simulator's stated limits give one clear error, not a traceback in a run (issue 17 items 13-15, 30)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from kdumpsim.config.model import MAX_DEVICES, MAX_RAM_RANGES, load_model, model_from_dict
from kdumpsim.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
PAPER = yaml.safe_load((ROOT / "models" / "paper-i386-2005.yaml").read_text())
MODERN = ROOT / "models" / "modern-x86_64.yaml"


def test_too_many_ram_ranges() -> None:
    raw = copy.deepcopy(PAPER)
    raw["memory"]["iomem"] = ["00100000-1fffffff : System RAM"] + [
        f"{0x20000000 + i * 0x2000:08x}-{0x20000000 + i * 0x2000 + 0xfff:08x} : System RAM"
        for i in range(MAX_RAM_RANGES)]
    with pytest.raises(ConfigError, match=f"at most {MAX_RAM_RANGES} are simulated .*PT_LOAD"):
        model_from_dict(raw)


def test_too_many_devices() -> None:
    raw = copy.deepcopy(PAPER)
    raw["devices"] = [dict(raw["devices"][0], name=f"eth{i}", descriptors=3) for i in range(MAX_DEVICES + 1)]
    with pytest.raises(ConfigError, match=f"at most {MAX_DEVICES} are simulated"):
        model_from_dict(raw)


def test_as_many_devices_as_allowed_run() -> None:
    from kdumpsim.measure import simulate
    raw = copy.deepcopy(PAPER)
    raw["devices"] = [dict(raw["devices"][0], name=f"eth{i}", descriptors=3, packet_rate=10, start="10s")
                      for i in range(MAX_DEVICES)]
    assert simulate(model_from_dict(raw), 0).outcome


def test_a_deeply_nested_set_value() -> None:
    with pytest.raises(ConfigError, match="nested more than 64 levels"):
        load_model(MODERN, ["description=" + "[" * 3000 + "]" * 3000])


def test_a_huge_integer_set_value() -> None:
    with pytest.raises(ConfigError, match="4300 digits") as e:
        load_model(MODERN, ["cpus.count=" + "9" * 5000])
    assert len(str(e.value)) < 400


def test_many_cpus_get_elf_headers_beyond_16k() -> None:
    """kexec-tools' 16 KiB for the ELF headers is a minimum, not a limit (item 30)."""
    from kdumpsim.kexec.load import kexec_load
    from kdumpsim.machine.layout import Machine
    cfg = load_model(MODERN, ["cpus.count=400"])
    image = kexec_load(Machine(cfg, 0))
    hdr = next(s for s in image.segments if s.name == "elfcorehdr")
    assert hdr.memsz > 16 * 1024 and len(hdr.data) <= hdr.memsz


def test_a_device_that_would_write_without_end_is_stopped_with_a_clear_error(monkeypatch) -> None:
    from kdumpsim.crash import dma
    from kdumpsim.errors import LayoutError
    from kdumpsim.measure import simulate
    monkeypatch.setattr(dma, "MAX_WRITES", 1000)
    raw = copy.deepcopy(PAPER)
    raw["devices"] = [{"name": "snd0", "kind": "cyclic", "bus": "pci0", "period": "10us", "chunk": "64"}]
    with pytest.raises(LayoutError, match="more than 1000 DMA writes"):
        simulate(model_from_dict(raw), 0)


def test_a_grid_too_big_is_refused_before_it_is_built(tmp_path) -> None:
    import time

    from kdumpsim.sweep.design import load_experiment
    exp = tmp_path / "big.yaml"
    exp.write_text(f"""name: big
base: {{model: {ROOT}/models/paper-i386-2005.yaml}}
replicates: 1
seed: 1
axes:
  - {{name: a, key: devices.eth0.packet_rate, range: {{start: 1, stop: 1000, steps: 1000}}}}
  - {{name: b, key: cpus.busy_share, range: {{start: 0, stop: 1, steps: 1000}}}}
""")
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match="1000000 points x 1 replicates asked for"):
        load_experiment(exp)
    assert time.monotonic() - t0 < 10
