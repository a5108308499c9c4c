"""Scenario files of the real-kdump lab: load a YAML file into a checked object.

A scenario names the emulated NIC, the traffic (rate and bounds), whether the
capture kernel loads the NIC driver, the dump disk, guest RAM, crashkernel
size, and an optional IOMMU setup.  Device and option names are QEMU's
(`qemu-system-x86_64 -device help`; QEMU docs "Network emulation",
"intel-iommu" in docs/devel/..., system/invocation `-M q35`).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import yaml

from . import LabError

NICS = ("e1000", "virtio-net")
# crashkernel=SIZE[@OFFSET] or SIZE,high / SIZE,low (Documentation/admin-guide/kdump/kdump.rst);
# what `kdumpsim recommend` prints for the first kernel.
CRASHKERNEL_RE = re.compile(r"^(\d+)([KMG])(@\d+[KMG]?|,high|,low)?$")
# One capture-kernel parameter: no spaces or commas (lab_capextra carries them comma-separated).
CAPTURE_WORD_RE = re.compile(r"^[A-Za-z0-9_.:=/-]+$")
DISKS = ("virtio", "ide")


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    description: str = ""
    nic: str = "e1000"
    rate_pps: float = 200.0          # frames per second sent to the guest
    max_packets: int = 6000           # hard bound on frames sent
    max_seconds: float = 90.0         # hard bound on sending time
    warmup_seconds: float = 3.0       # traffic before the panic
    frame_len: int = 256              # Ethernet frame bytes (>= 64)
    capture_loads_nic: bool = False
    disk: str = "virtio"
    ram_mib: int = 512
    crashkernel_mib: int = 160
    crashkernel: str | None = None    # the whole crashkernel= value (e.g. 128M@64M, 256M,high); replaces crashkernel_mib
    capture_append: tuple[str, ...] = ()   # extra capture-kernel parameters (e.g. intel_iommu=off)
    iommu: bool = False               # -M q35 -device intel-iommu; capture gets intel_iommu=off
    timeout_seconds: float = 150.0    # whole-cycle bound

    def validate(self) -> None:
        if self.nic not in NICS:
            raise LabError(f"scenario {self.name}: nic must be one of {NICS}, not {self.nic!r}")
        if self.disk not in DISKS:
            raise LabError(f"scenario {self.name}: disk must be one of {DISKS}, not {self.disk!r}")
        if not 0 < self.rate_pps <= 5000:
            raise LabError(f"scenario {self.name}: rate_pps must be in (0, 5000]")
        if not 0 < self.max_packets <= 200000:
            raise LabError(f"scenario {self.name}: max_packets must be in (0, 200000]")
        if not 0 < self.max_seconds <= 600:
            raise LabError(f"scenario {self.name}: max_seconds must be in (0, 600]")
        if not 64 <= self.frame_len <= 1514:
            raise LabError(f"scenario {self.name}: frame_len must be in [64, 1514]")
        if not 128 <= self.ram_mib <= 4096:
            raise LabError(f"scenario {self.name}: ram_mib must be in [128, 4096]")
        if not 32 <= self.crashkernel_mib < self.ram_mib // 2:
            raise LabError(f"scenario {self.name}: crashkernel_mib must be in [32, ram_mib/2)")
        if self.crashkernel is not None:
            m = CRASHKERNEL_RE.match(str(self.crashkernel))
            if m is None:
                raise LabError(f"scenario {self.name}: crashkernel {self.crashkernel!r} is not SIZE[@OFFSET], "
                               "SIZE,high or SIZE,low (e.g. 128M@64M)")
            mib = int(m.group(1)) * {"K": 1 / 1024, "M": 1, "G": 1024}[m.group(2)]
            if not 32 <= mib < self.ram_mib // 2:
                raise LabError(f"scenario {self.name}: crashkernel size must be in [32M, ram_mib/2)")
        for word in self.capture_append:
            if not CAPTURE_WORD_RE.match(str(word)):
                raise LabError(f"scenario {self.name}: capture_append word {word!r} must be one parameter "
                               "without spaces or commas")

    def crashkernel_arg(self) -> str:
        """The first kernel's crashkernel= parameter."""
        return f"crashkernel={self.crashkernel or f'{self.crashkernel_mib}M'}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def from_dict(data: dict, default_name: str = "scenario") -> Scenario:
    if not isinstance(data, dict):
        raise LabError("scenario: the YAML document must be a mapping")
    known = {f.name for f in dataclasses.fields(Scenario)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise LabError(f"scenario: unknown keys {unknown}")
    data = dict(data)
    data.setdefault("name", default_name)
    if isinstance(data.get("capture_append"), list):
        data["capture_append"] = tuple(data["capture_append"])
    scen = Scenario(**data)
    scen.validate()
    return scen


def load(path: str | Path) -> Scenario:
    path = Path(path)
    if not path.is_file():
        raise LabError(f"scenario file not found: {path}")
    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    return from_dict(data, default_name=path.stem)
