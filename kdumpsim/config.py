"""Model files (models/*.yaml): one validated schema, errors that name the field.

Defaults come from kdumpsim.defaults; fields whose default depends on the
kernel era (2005 or modern) are None here and filled by `_fill_era_defaults`.
"""

from __future__ import annotations

import copy
import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from . import defaults as D
from .units import parse_duration, parse_rate, parse_size


class ConfigError(Exception):
    """A bad model or experiment file: names the file, the dotted field and what is wrong."""

    def __init__(self, source: str, field: str, message: str):
        self.source, self.field, self.message = source, field, message
        where = f"{source}: {field}: " if field else f"{source}: "
        super().__init__(where + message)


def _nonneg_size(v: Any) -> int:
    n = parse_size(v)
    if n < 0:
        raise ValueError(f"size must not be negative, got {v!r}")
    return n


Size = Annotated[int, BeforeValidator(_nonneg_size)]
Duration = Annotated[int, BeforeValidator(parse_duration)]   # integer ns
Rate = Annotated[float, BeforeValidator(parse_rate)]         # bytes/s


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


# ---------------------------------------------------------------- machine
_IOMEM_RE = re.compile(r"^\s*([0-9a-fA-F]+)-([0-9a-fA-F]+)\s*:\s*(.+?)\s*$")
IOMEM_TYPES = ("System RAM", "reserved", "ACPI Tables", "ACPI Non-volatile Storage",
               "PCI Bus", "Video RAM area", "System ROM", "Adapter ROM")


class IomemRange(Strict):
    """One top-level /proc/iomem line; `end` is inclusive as in /proc/iomem."""
    start: int
    end: int
    type: str

    @property
    def size(self) -> int:
        return self.end - self.start + 1


def _parse_iomem(v: Any) -> Any:
    if isinstance(v, str):
        m = _IOMEM_RE.match(v)
        if not m:
            raise ValueError(f"cannot parse {v!r}: expected '00100000-1fffffff : System RAM'")
        start, end, kind = int(m.group(1), 16), int(m.group(2), 16), m.group(3)
        return {"start": start, "end": end, "type": kind}
    return v


class CpuSpec(Strict):
    count: int = Field(ge=1, le=8192)
    sockets: int = Field(default=1, ge=1)
    panic_cpu: int = Field(default=0, ge=0)
    # CPUs that never answer the NMI: "hung" (stuck with NMIs blocked) or "nmi_lost".
    unresponsive: dict[int, Literal["hung", "nmi_lost"]] = Field(default_factory=dict)
    busy_share: float = Field(default=0.5, ge=0, le=1, description="share of CPUs running a task (pid>0) at the crash")


class MemorySpec(Strict):
    iomem: list[Annotated[IomemRange, BeforeValidator(_parse_iomem)]] = Field(min_length=1)
    numa_nodes: int = Field(default=1, ge=1)


class BusSpec(Strict):
    name: str
    kind: Literal["pci", "pcie"] = "pcie"
    bandwidth: Rate | None = None
    latency: Duration = parse_duration(D.PCI_LATENCY)
    iommu: bool = False
    numa_node: int = 0


class IommuSpec(Strict):
    # What the capture kernel does with the IOMMU it finds on (FACTS.md): copy the
    # old translation tables (Intel VT-d today), turn it off (stale DMA lands on
    # raw addresses), or start with empty tables (DMA faults, blocked).
    capture_kernel: Literal["copy_tables", "disable", "fault"] = "copy_tables"
    iova_base: Size = 0xF000_0000  # IOVAs are handed out top-down below 4 GiB (assumption of our layout)


class TopologySpec(Strict):
    apic_bus_latency: Duration | None = None
    socket_link_latency: Duration = parse_duration(D.SOCKET_LINK_LATENCY)
    memory_bandwidth: Rate = parse_rate(D.MEMORY_BANDWIDTH)
    buses: list[BusSpec] = Field(default_factory=lambda: [BusSpec(name="pci0")])
    iommu: IommuSpec | None = None


class Placement(Strict):
    mode: Literal["random", "range", "reservation"] = "random"
    start: Size | None = None
    end: Size | None = None

    @model_validator(mode="after")
    def _range(self) -> "Placement":
        if self.mode == "range":
            if self.start is None or self.end is None:
                raise ValueError("placement mode 'range' needs start and end")
            if self.end <= self.start:
                raise ValueError("placement end must be above start")
        return self


class DeviceBase(Strict):
    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    bus: str = "pci0"
    start: Duration = 0                 # when post-panic traffic begins, relative to the panic
    duration: Duration | None = None    # how long it goes on (None: until the device is stopped)
    placement: Placement = Field(default_factory=Placement)
    capture_driver: bool = True         # the capture kernel probes its driver, which stops old DMA
    needs_reset_devices: bool = False   # the driver stops old DMA only when `reset_devices` is given


class NicRxRing(DeviceBase):
    """An RX ring whose dead driver no longer refills it (e1000 defaults)."""
    kind: Literal["nic_rx_ring"]
    descriptors: int = Field(default=D.E1000_RX_DESCRIPTORS, ge=1, le=65536)
    buffer_size: Size = D.E1000_RX_BUFFER
    packet_size: Size = 1514
    packet_rate: float = Field(default=50_000.0, gt=0, description="packets per second")


class CyclicDma(DeviceBase):
    """A DMA engine cycling over one buffer forever (sound card, capture card)."""
    kind: Literal["cyclic"]
    buffer_size: Size = 64 * 1024
    chunk: Size = 4096
    period: Duration = parse_duration("1ms")


class StorageController(DeviceBase):
    """Commands in flight at the crash, completing later by DMA into their buffers."""
    kind: Literal["storage"]
    commands: int = Field(default=32, ge=1, le=65536)
    command_size: Size = 64 * 1024


Device = Annotated[Union[NicRxRing, CyclicDma, StorageController], Field(discriminator="kind")]


class KexecSpec(Strict):
    crashkernel: str = "32M@16M"
    capture_kernel_size: Size | None = None
    initrd_size: Size | None = None
    append: str | None = None
    elf_core_headers: Literal["elf64", "elf32"] = "elf64"
    skip_checks: bool = False            # kexec --skip-checks: purgatory does not verify
    backup: bool = True                  # kexec-tools' backup region (kexec_load path)


class TimingSpec(Strict):
    crash_save_cpu: Duration = parse_duration(D.CRASH_SAVE_CPU)
    lapic_shutdown: Duration = parse_duration(D.LAPIC_SHUTDOWN)
    ioapic_disable: Duration = parse_duration(D.IOAPIC_DISABLE)
    hpet_disable: Duration = parse_duration(D.HPET_DISABLE)
    machine_kexec: Duration = parse_duration(D.MACHINE_KEXEC)
    nmi_timeout: Duration = parse_duration(D.NMI_SHOOTDOWN_TIMEOUT)
    nmi_poll: Duration = parse_duration(D.NMI_SHOOTDOWN_POLL)
    sha256_rate: Rate | None = None
    backup_copy_rate: Rate = parse_rate(D.BACKUP_COPY_RATE)
    capture_boot: Duration = parse_duration(D.CAPTURE_BOOT)
    driver_init: Duration = parse_duration(D.CAPTURE_DRIVER_INIT)
    iommu_init: Duration = parse_duration(D.CAPTURE_IOMMU_INIT)
    vmcore_init: Duration = parse_duration(D.VMCORE_INIT_AT)
    dump_start_delay: Duration = parse_duration(D.DUMP_START_DELAY)
    dump_throughput: Rate | None = None

    @model_validator(mode="after")
    def _order(self) -> "TimingSpec":
        for name in ("driver_init", "iommu_init", "vmcore_init"):
            if not 0 <= getattr(self, name) <= self.capture_boot:
                raise ValueError(f"{name} must lie within capture_boot (0..{self.capture_boot} ns)")
        for name in ("crash_save_cpu", "nmi_timeout", "capture_boot"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.nmi_poll <= 0:
            raise ValueError("nmi_poll must be positive")
        return self


class ModelConfig(Strict):
    name: str
    description: str = ""
    arch: Literal["i386", "x86_64"]
    era: Literal["2005", "modern"] = "modern"
    design: Literal["2005", "2004"] = "2005"
    cpus: CpuSpec
    memory: MemorySpec
    kexec: KexecSpec = Field(default_factory=KexecSpec)
    timing: TimingSpec = Field(default_factory=TimingSpec)
    topology: TopologySpec = Field(default_factory=TopologySpec)
    devices: list[Device] = Field(default_factory=list)


def _fill_era_defaults(m: ModelConfig) -> None:
    modern = m.era == "modern"
    k, t, topo = m.kexec, m.timing, m.topology
    if k.capture_kernel_size is None:
        k.capture_kernel_size = D.CAPTURE_KERNEL_SIZE_MODERN if modern else D.CAPTURE_KERNEL_SIZE_2005
    if k.initrd_size is None:
        k.initrd_size = D.INITRD_SIZE_MODERN if modern else D.INITRD_SIZE_2005
    if k.append is None:
        k.append = D.CMDLINE_MODERN if modern else D.CMDLINE_2005
    if t.sha256_rate is None:
        t.sha256_rate = parse_rate(D.PURGATORY_SHA256_RATE_MODERN if modern else D.PURGATORY_SHA256_RATE_2005)
    if t.dump_throughput is None:
        t.dump_throughput = parse_rate(D.DUMP_THROUGHPUT_MODERN if modern else D.DUMP_THROUGHPUT_2005)
    if topo.apic_bus_latency is None:
        topo.apic_bus_latency = parse_duration(D.APIC_BUS_LATENCY_MODERN if modern else D.APIC_BUS_LATENCY_2005)
    for bus in topo.buses:
        if bus.bandwidth is None:
            bus.bandwidth = parse_rate(D.PCI_BANDWIDTH if bus.kind == "pci" else D.PCIE_X4_BANDWIDTH)


class _FieldError(ValueError):
    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(message)


def _check_consistency(m: ModelConfig) -> None:
    c = m.cpus
    if c.panic_cpu >= c.count:
        raise _FieldError("cpus.panic_cpu", f"CPU {c.panic_cpu} does not exist (cpus.count is {c.count})")
    for cpu in c.unresponsive:
        if not 0 <= cpu < c.count:
            raise _FieldError(f"cpus.unresponsive.{cpu}", f"CPU {cpu} does not exist (cpus.count is {c.count})")
        if cpu == c.panic_cpu:
            raise _FieldError(f"cpus.unresponsive.{cpu}", "the panicking CPU cannot be unresponsive")
    if c.sockets > c.count:
        raise _FieldError("cpus.sockets", f"{c.sockets} sockets for {c.count} CPUs")
    prev_end = -1
    for i, r in enumerate(m.memory.iomem):
        if r.end < r.start:
            raise _FieldError(f"memory.iomem.{i}", "range ends before it starts")
        if r.start <= prev_end:
            raise _FieldError(f"memory.iomem.{i}", "ranges must be sorted and must not overlap")
        prev_end = r.end
    if not any(r.type == "System RAM" for r in m.memory.iomem):
        raise _FieldError("memory.iomem", "no 'System RAM' range")
    if m.arch == "i386" and m.memory.iomem[-1].end >= 1 << 36:
        raise _FieldError("memory.iomem", "i386 (PAE) addresses at most 64 GiB")
    buses = {b.name for b in m.topology.buses}
    if len(buses) != len(m.topology.buses):
        raise _FieldError("topology.buses", "bus names must be unique")
    for b in m.topology.buses:
        if b.numa_node >= m.memory.numa_nodes:
            raise _FieldError(f"topology.buses.{b.name}.numa_node", "no such memory node")
        if b.iommu and m.topology.iommu is None:
            raise _FieldError(f"topology.buses.{b.name}.iommu", "set topology.iommu to describe the IOMMU")
    names = [d.name for d in m.devices]
    for i, d in enumerate(m.devices):
        if names.count(d.name) > 1:
            raise _FieldError(f"devices.{i}.name", f"duplicate device name {d.name!r}")
        if d.bus not in buses:
            raise _FieldError(f"devices.{i}.bus", f"no bus {d.bus!r}{_did_you_mean(d.bus, buses)}")
        if d.duration is not None and d.duration < 0:
            raise _FieldError(f"devices.{i}.duration", "must not be negative")
    if m.kexec.elf_core_headers == "elf32" and m.arch == "x86_64":
        raise _FieldError("kexec.elf_core_headers", "elf32 core headers are for i386 only")
    if m.kexec.elf_core_headers == "elf32" and m.memory.iomem[-1].end >= 1 << 32:
        raise _FieldError("kexec.elf_core_headers", "elf32 headers cannot describe RAM above 4 GiB")


def _did_you_mean(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# ---------------------------------------------------------------- loading
def read_yaml(path: str | Path) -> Any:
    """Read a YAML file; syntax errors and missing files become ConfigError."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(str(path), "", "no such file") from None
    except IsADirectoryError:
        raise ConfigError(str(path), "", "is a directory, not a YAML file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(str(path), "", f"cannot read: {e}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(str(path), "", f"YAML syntax error: {where}{problem}") from None


def parse_override(text: str) -> tuple[str, Any]:
    """`timing.capture_boot=20s` -> ("timing.capture_boot", "20s") with YAML scalar typing."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError("--set", text, "expected dotted.key=value")
    try:
        return key.strip(), yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        return key.strip(), value


def set_dotted(data: dict, key: str, value: Any) -> None:
    """Set `a.b.0.c` (list index) or `devices.nic0.start` (list item by name) in raw data."""
    parts = key.split(".")
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            idx = _list_index(node, part, ".".join(parts[: i + 1]))
            if last:
                node[idx] = value
                return
            node = node[idx]
        elif isinstance(node, dict):
            if last:
                node[part] = value
                return
            if not isinstance(node.get(part), (dict, list)):
                node[part] = {}
            node = node[part]
        else:
            raise ConfigError("--set", key, f"{'.'.join(parts[:i])} is not a mapping or list")


def _list_index(node: list, part: str, path: str) -> int:
    if part.lstrip("-").isdigit():
        idx = int(part)
        if not -len(node) <= idx < len(node):
            raise ConfigError("--set", path, f"index {idx} out of range (list has {len(node)} items)")
        return idx
    names = [item.get("name") for item in node if isinstance(item, dict)]
    if part in names:
        return names.index(part)
    raise ConfigError("--set", path, f"no list item named {part!r}{_did_you_mean(part, names)}")


def validate_model(raw: Any, source: str) -> ModelConfig:
    """Validate raw YAML data into a ModelConfig or raise ConfigError naming the field."""
    if not isinstance(raw, dict):
        raise ConfigError(source, "", f"expected a mapping at the top level, got {type(raw).__name__}")
    try:
        model = ModelConfig.model_validate(raw)
    except ValidationError as e:
        raise _config_error(e, source, ModelConfig, raw) from None
    _fill_era_defaults(model)
    try:
        _check_consistency(model)
    except _FieldError as e:
        raise ConfigError(source, e.field, str(e)) from None
    return model


def load_model(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> ModelConfig:
    raw = read_yaml(path)
    if isinstance(raw, dict):
        raw = copy.deepcopy(raw)
        for text in overrides:
            set_dotted(raw, *parse_override(text))
    return validate_model(raw, str(path))


def model_from_dict(raw: dict, source: str = "<model>", overrides: dict[str, Any] | None = None) -> ModelConfig:
    raw = copy.deepcopy(raw)
    for key, value in (overrides or {}).items():
        set_dotted(raw, key, value)
    return validate_model(raw, source)


def _config_error(e: ValidationError, source: str, root: type[BaseModel], raw: Any) -> ConfigError:
    err = e.errors(include_url=False)[0]
    loc = _readable_loc(err["loc"], raw)
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        known = _known_fields(root, err["loc"][:-1])
        msg = f"unknown key{_did_you_mean(err['loc'][-1], known)}"
    elif err["type"] in ("missing",):
        msg = "required field is missing"
    elif err["type"] == "union_tag_invalid":
        msg = f"unknown kind {err['input'].get('kind')!r}" + _did_you_mean(
            err["input"].get("kind"), ("nic_rx_ring", "cyclic", "storage"))
    msg = msg.removeprefix("Value error, ")
    return ConfigError(source, loc, msg)


def _readable_loc(loc: tuple, raw: Any) -> str:
    """Drop pydantic's discriminator/validator tags so the path matches the YAML."""
    out, node = [], raw
    for part in loc:
        if isinstance(node, list) and isinstance(part, int):
            out.append(str(part))
            node = node[part] if part < len(node) else None
        elif isinstance(node, dict) and part in node:
            out.append(str(part))
            node = node[part]
        elif isinstance(node, dict) and isinstance(part, str) and part in (
                "nic_rx_ring", "cyclic", "storage", "function-before[_parse_iomem(), IomemRange]"):
            continue
        else:
            out.append(str(part))
            node = None
    return ".".join(out)


def _known_fields(root: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the sub-model at `loc` (for did-you-mean)."""
    cls: Any = root
    for part in loc:
        if isinstance(part, int) or cls is None:
            continue
        if part in ("nic_rx_ring", "cyclic", "storage"):
            cls = {"nic_rx_ring": NicRxRing, "cyclic": CyclicDma, "storage": StorageController}[part]
            continue
        field = getattr(cls, "model_fields", {}).get(part)
        cls = _model_of(field.annotation) if field else None
    return list(getattr(cls, "model_fields", {}).keys())


def _model_of(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_of(arg)
        if found is not None:
            return found
    return None
