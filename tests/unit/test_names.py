"""One vocabulary: a device's name is a label, never a behaviour."""

from __future__ import annotations

import json

import pytest

from kdumpsim.errors import ConfigError
from kdumpsim.measure import simulate
from kdumpsim.names import cpu_of, reserved_name


def _storage(name: str) -> str:
    spec = {"name": name, "kind": "storage", "bus": "pcie0", "commands": 64, "command_size": "64K",
            "capture_driver": False, "start": "0ms", "duration": "2s"}
    return "devices=" + json.dumps([spec])


def _numbers(run, name: str) -> dict:
    m = run.metrics
    return {"outcome": run.outcome, "corrupted_bytes": m["corrupted_bytes"],
            "dump_pages_corrupted": m["dump_pages_corrupted"], "dma": m["dma"][name],
            "hits": {r: d[name] for r, d in m["dma_hits"].items()}}


@pytest.mark.parametrize("other", ["cpu_fan", "kernel_dma", "capture0", "x"])
def test_renaming_a_device_changes_nothing(small_modern, other):
    base = _numbers(simulate(small_modern(_storage("dev0")), 5), "dev0")
    assert base["dump_pages_corrupted"] > 0          # the device does damage the dump
    assert _numbers(simulate(small_modern(_storage(other)), 5), other) == base


@pytest.mark.parametrize("name", ["cpu1", "cpu0", "purgatory", "kernel", "iommu", "mem0", "socket1", "pcie0"])
def test_a_device_cannot_take_an_actor_or_topology_name(small_modern, name):
    with pytest.raises(ConfigError, match="a device needs a name of its own"):
        small_modern(_storage(name))


def test_cpu_actor_names():
    assert cpu_of("cpu12") == 12
    assert cpu_of("cpu_fan") is None and cpu_of("cpu") is None
    assert reserved_name("nic0") is None
