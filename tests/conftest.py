"""Shared test helpers."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


def require_tool(name: str) -> str:
    """Path of the external tool `name`; skip the test if it is missing.

    When the CI environment variable is set (see .ci/run) a missing tool
    fails the test instead, so CI cannot go green by skipping.
    """
    path = shutil.which(name)
    if path is None:
        message = f"{name} not found on PATH"
        if "CI" in os.environ:
            pytest.fail(f"{message} (required because CI is set)")
        pytest.skip(message)
    return path


ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = ROOT / "models"


def load_named(name: str, *overrides: str):
    """A shipped model by name (models/NAME.yaml) with --set style overrides."""
    from kdumpsim.config.model import load_model
    return load_model(MODELS_DIR / f"{name}.yaml", list(overrides))


SMALL_MODERN = ('memory.iomem=["00001000-0009fbff : System RAM", "00100000-3fffffff : System RAM"]',
                "memory.numa_nodes=1", "topology.buses.pcie1.numa_node=0", "cpus.count=4", "cpus.sockets=1",
                "cpus.panic_cpu=1", "kexec.crashkernel=128M",
                # a small kdump initramfs: the 28M default, unpacked, does not fit a 128M capture kernel (capture_oom)
                "kexec.initrd_size=8M")


@pytest.fixture
def model():
    """model(name, *overrides): a shipped model with overrides."""
    return load_named


@pytest.fixture
def small_modern():
    """small_modern(*overrides): the modern model on 1 GiB and 4 CPUs, so tests stay fast."""
    return lambda *overrides: load_named("modern-x86_64", *SMALL_MODERN, *overrides)


@pytest.fixture(scope="session")
def finished_run():
    """One measured crash of the small modern machine (seed 1), shared by read-only tests."""
    from kdumpsim.measure import simulate
    return simulate(load_named("modern-x86_64", *SMALL_MODERN), 1)


# Where a stale ring of small_analyse_experiment's cap0 sits: the printk log, the page tables, or
# the page allocator's free memory (kdumpsim.firstkernel's layout of the modern kernel).
WINDOW_LOG = "{label: log, devices.cap0.placement: {mode: stale, start: 0x2d04000, end: 0x2da0000}}"
WINDOW_PAGE_TABLES = "{label: page_tables, devices.cap0.placement: {mode: stale, start: 0x2c00000, end: 0x2c80000}}"
WINDOW_ANYWHERE = "{label: anywhere, devices.cap0.placement: {mode: allocator}}"


def small_analyse_experiment(name: str, seed: int, replicates: int, device: str, windows: list[str],
                             extra: str = "") -> str:
    """An `analyse: true` experiment on the modern model trimmed to 512 MiB (2 CPUs, one
    node), whose vmcores the real tools read in seconds: one cyclic device `cap0`
    (`device`: its YAML flow mapping), placed by each of `windows` (linked-axis entries),
    starting at 50 ms or 13 s. `extra`: more override lines, indented as the others."""
    lines = "\n".join(f"      - {w}" for w in windows)
    return f"""
name: {name}
base:
  model: {ROOT}/models/modern-x86_64.yaml
  overrides:
    cpus.count: 2
    cpus.sockets: 1
    cpus.panic_cpu: 1
    memory.numa_nodes: 1
    topology.buses.1.numa_node: 0
    memory.iomem: ["00001000-0009fbff : System RAM", "00100000-1fffffff : System RAM"]
    kexec.crashkernel: 128M
    kexec.initrd_size: 8M       # the default 28M, unpacked, does not fit the capture kernel in 128M
{extra}    devices:
      - {device}
seed: {seed}
replicates: {replicates}
axes:
  - name: window
    linked:
{lines}
  - {{name: dma_start, key: devices.cap0.start, values: [50ms, 13s]}}
analyse: true
"""
