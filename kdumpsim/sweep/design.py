"""Experiment files (experiments/*.yaml): the format, the sweep points and the seeds.

An experiment is a base model plus axes; every combination of axis values (and
every sampled point, crossed with them) is a *point*; every point runs
`replicates` times. Each run's seed is derived from the master seed, the
point's overrides and the replicate number, so any run can be re-created
alone with `kdumpsim run MODEL --seed S --set KEY=VALUE ...` (the `rerun`
column of the results table), independent of the order or the executor.

    exp = load_experiment("experiments/dma_sweep.yaml")
    exp.points[0].overrides, exp.runs()[0].seed
"""

from __future__ import annotations

import copy
import difflib
import fnmatch
import hashlib
import json
import math
import random
import re
import shlex
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from kdumpsim.config.model import ModelConfig, _model_of, config_error, read_yaml, set_dotted, validate_model
from kdumpsim.errors import ConfigError, LayoutError
from kdumpsim.machine.layout import derive_seed
from kdumpsim.measure.record import RECORD_COLUMNS, RECORD_PREFIXES
from kdumpsim.units import fmt_duration, fmt_duration_exact, fmt_size, parse_duration, parse_size

MAX_POINTS = 100_000         # points an experiment may have (each is validated and laid out before a sweep)
MODEL_CACHE = 256            # validated point models kept in memory (the grid itself is never built)
MAX_RUNS = 10_000_000
NAME_RE = r"^[A-Za-z_][A-Za-z0-9_]*$"
_TOO_LARGE = re.compile(r"^\s*-?\d+(\.\d+)?[eE]\+?\d{3,}\s*(ns|us|µs|ms|s|min)\s*$")  # 1e300s: float overflow
NS = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000}

# Always kept: the summary table needs them (and which loading method a run used).
ALWAYS_KEPT = ("outcome", "kexec_method", "detected", "corrupted_bytes", "dump_fidelity")
# Identity columns every row has (axis columns go between `seed` and `outcome`).
ID_COLUMNS = ("point", "point_label", "replicate", "seed")
TAIL_COLUMNS = ("error", "overrides", "rerun")
# Rates a plot can draw besides numeric columns: share of runs per outcome, and
# capture failure (no usable dump: every outcome but kdumpsim.names.CAPTURE_OK).
RATE_METRICS = ("capture_failure_rate", "dump_corrupted_rate", "detected_rate")


# ---------------------------------------------------------------- the file format
class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


Scalar = int | float | str


class BaseSpec(Strict):
    """The model every point starts from."""
    model: str | None = Field(default=None, description="model YAML, relative to the repo root or to the experiment "
                                                      "file (omit it when an axis gives `models`)")
    overrides: dict[str, Any] = Field(default_factory=dict, description="dotted key -> value, applied in order")


class RangeSpec(Strict):
    """`steps` evenly spaced values from start to stop, both included."""
    start: Scalar
    stop: Scalar
    steps: int = Field(ge=1, le=100_000)
    scale: Literal["linear", "log"] = "linear"


class AxisSpec(Strict):
    """One grid axis: exactly one of `values`, `range`, `linked` or `models`."""
    name: str | None = Field(default=None, pattern=NAME_RE, description="column name (default: the key)")
    key: str | None = Field(default=None, description="dotted model key, e.g. devices.nic0.start")
    values: list[Any] | None = Field(default=None, min_length=1)
    range: RangeSpec | None = None
    linked: list[dict[str, Any]] | None = Field(
        default=None, min_length=1, description="each value: {label: ..., dotted.key: value, ...}")
    models: list[str] | None = Field(
        default=None, min_length=1, description="a fleet: model files, one machine per value (base.overrides "
                                                "apply to each)")


class SampleAxisSpec(Strict):
    name: str | None = Field(default=None, pattern=NAME_RE)
    key: str
    low: Scalar
    high: Scalar
    scale: Literal["linear", "log"] = "linear"


class SampleSpec(Strict):
    """`count` points drawn jointly over `axes` (uniform random, or a Latin hypercube)."""
    method: Literal["random", "lhs"]
    count: int = Field(ge=1, le=100_000)
    axes: list[SampleAxisSpec] = Field(min_length=1)


class PlotSpec(Strict):
    kind: Literal["heatmap", "line", "outcomes"]
    x: str = Field(description="axis name on the horizontal")
    y: str | None = Field(default=None, description="heatmap: axis name on the vertical")
    metric: str | None = Field(default=None, description="a rate (capture_failure_rate, <outcome>_rate) "
                                                          "or a numeric column (mean)")
    by: str | None = Field(default=None, description="line: one line per value of this axis")
    facet: str | None = Field(default=None, description="one panel per value of this axis")
    file: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]+\.png$")
    title: str | None = None


class ExperimentSpec(Strict):
    # One path component (the default output is results/<name>), never '.' or '..'.
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", max_length=128)
    description: str = ""
    base: BaseSpec
    axes: list[AxisSpec] = Field(default_factory=list)
    sample: SampleSpec | None = None
    replicates: int = Field(ge=1, le=1_000_000)
    seed: int = Field(ge=0, lt=2**64, description="master seed: every run's seed is derived from it")
    metrics: Literal["all"] | list[str] = "all"
    plots: list[PlotSpec] = Field(default_factory=list)
    vmcores: Literal["none", "first"] = "none"
    # Run the real crash tools on every run's vmcore (kdumpsim.analysis): slow, one vmcore per worker on disk.
    analyse: bool = False

    @field_validator("name")
    @classmethod
    def _one_component(cls, v: str) -> str:
        if v in (".", ".."):
            raise ValueError(f"{v!r} is not a name: the default output directory is results/<name>, so the name "
                             "must be one path component, not '.' or '..'")
        return v


# ---------------------------------------------------------------- resolved experiment
@dataclass(frozen=True)
class Axis:
    """A resolved axis: its column name, what it sets, its values (as the model
    takes them), their column values and their display text."""
    name: str
    field: str                     # where it is in the file, e.g. "axes.2" or "sample.axes.0"
    keys: tuple[str, ...]          # dotted keys it sets (several for a linked axis)
    settings: tuple[dict[str, Any], ...]   # per value: dotted key -> model value
    column: tuple[Any, ...]        # per value: what the table stores
    display: tuple[str, ...]       # per value: text for labels and plots
    unit: str = ""                 # "s" (durations), "bytes" (sizes) or "" (as written)
    source: str = "values"         # values | range | linked | models | sample: how the file gave it

    def value_field(self, j: int) -> str:
        """Where value j is written in the file (for error messages)."""
        if self.source in ("values", "linked", "models"):
            return f"{self.field}.{self.source}.{j}"
        return f"{self.field}.{self.source}" if self.source == "range" else self.field


@dataclass(frozen=True)
class Point:
    index: int
    label: str
    params: dict[str, Any]         # axis name -> column value
    display: dict[str, str]        # axis name -> display text
    overrides: dict[str, Any]      # dotted key -> model value, in application order
    model: int = 0                 # which of Experiment.models (a fleet axis chooses it)
    machine: str | None = None     # that model's file as the experiment names it (fleets only)

    @property
    def key(self) -> str:
        """Identity of the point for seeding: its overrides, canonical JSON;
        on a fleet, also the machine's model file (so an experiment without
        a fleet axis keeps the seeds it always had)."""
        ident: dict[str, Any] = self.overrides if self.machine is None else \
            {"@model": self.machine, **self.overrides}
        return json.dumps(ident, sort_keys=True, separators=(",", ":"), default=str)


@dataclass(frozen=True)
class ModelFile:
    """One machine an experiment runs: its file, how rerun commands name it, its YAML."""
    path: Path
    ref: str                       # relative to Experiment.root when inside it
    raw: dict[str, Any]
    field: str                     # where the experiment names it: base.model or axes.I.models.J


@dataclass(frozen=True, slots=True)
class RunSpec:
    point: int
    replicate: int
    seed: int


@dataclass
class Experiment:
    path: Path
    sha256: str
    spec: ExperimentSpec
    models: list[ModelFile]        # the base model, or each machine of a fleet axis
    root: Path                     # the directory the rerun commands run from
    axes: list[Axis]
    points: PointGrid
    _cfgs: OrderedDict[int, ModelConfig] = field(default_factory=OrderedDict, repr=False)

    @property
    def model_path(self) -> Path:
        return self.models[0].path

    @property
    def model_ref(self) -> str:
        """How `kdumpsim run` names the model; a fleet's files, comma-separated."""
        return ",".join(m.ref for m in self.models)

    @property
    def source(self) -> str:
        return str(self.path)

    def runs(self) -> list[RunSpec]:
        """Every run, ordered by (point, replicate)."""
        return list(self.iter_runs())

    def iter_runs(self) -> Iterator[RunSpec]:
        """Every run, ordered by (point, replicate), one at a time."""
        master = self.spec.seed
        for p in self.points:
            for r in range(self.spec.replicates):
                yield RunSpec(p.index, r, run_seed(master, p, r))

    def model_for(self, index: int) -> ModelConfig:
        """The validated model of one point (the last MODEL_CACHE are kept, so
        memory does not grow with the number of points)."""
        cfg = self._cfgs.get(index)
        if cfg is None:
            cfg = self._cfgs[index] = build_point_model(self, self.points[index])
            if len(self._cfgs) > MODEL_CACHE:
                self._cfgs.popitem(last=False)
        else:
            self._cfgs.move_to_end(index)
        return cfg

    def all_overrides(self, point: Point) -> list[tuple[str, Any]]:
        return list(self.spec.base.overrides.items()) + list(point.overrides.items())

    def rerun_command(self, point: Point, seed: int) -> str:
        """A `kdumpsim run` command line (run from `root`) that re-creates one run."""
        parts = ["kdumpsim", "run", self.models[point.model].ref, "--seed", str(seed)]
        for key, value in self.all_overrides(point):
            parts += ["--set", f"{key}={override_text(value)}"]
        return shlex.join(parts)

    def axis(self, name: str) -> Axis:
        return next(a for a in self.axes if a.name == name)


def run_seed(master: int, point: Point, replicate: int) -> int:
    """The seed of one run: stable across processes, machines and sweep order."""
    return derive_seed(master, point.key, replicate)


def override_text(value: Any) -> str:
    """The value as `--set key=VALUE` text that parses back (YAML) to the same value."""
    if isinstance(value, str):
        try:
            if yaml.safe_load(value) == value and "\n" not in value:
                return value
        except yaml.YAMLError:
            pass
    return json.dumps(value, separators=(", ", ": "))


# ---------------------------------------------------------------- loading
def load_experiment(path: str | Path) -> Experiment:
    """Read, validate and expand an experiment file; ConfigError names the field."""
    p = Path(path)
    raw = read_yaml(p)
    source = str(path)
    if not isinstance(raw, dict):
        raise ConfigError(source, "", f"expected a mapping at the top level, got {type(raw).__name__}")
    try:
        spec = ExperimentSpec.model_validate(raw)
    except ValidationError as e:
        raise _spec_error(e, source, raw) from None
    digest = hashlib.sha256(p.read_bytes()).hexdigest()
    models, root = _model_files(p, spec, source)
    axes = _resolve_axes(spec, source, [m.ref for m in models])
    _check_names(spec, axes, source)
    exp = Experiment(p, digest, spec, models, root, axes, PointGrid([], [], 1, []))
    exp.points = _expand(exp)
    _check_base(exp)
    return exp


def _spec_error(e: ValidationError, source: str, raw: Any) -> ConfigError:
    """An experiment file's schema error, worded as a model's (config.model.config_error)."""
    err = e.errors(include_url=False)[0]
    if tuple(err["loc"]) == ("name",) and err["type"] == "string_pattern_mismatch":
        return ConfigError(source, "name", f"{err.get('input')!r} is not a name: use letters, digits, '_', '.' and '-' "
                                           "(one path component, not '.' or '..': the default output directory is "
                                           "results/<name>)")
    return config_error(e, source, ExperimentSpec, raw)


def _fields_at(cls: Any, loc: tuple) -> list[str]:
    """Field names of the sub-model at `loc` (for did-you-mean)."""
    for part in loc:
        if isinstance(part, int) or cls is None:
            continue
        f = getattr(cls, "model_fields", {}).get(part)
        cls = _model_of(f.annotation) if f else None
    return list(getattr(cls, "model_fields", {}) or [])


def _repo_root(start: Path) -> Path | None:
    """The nearest ancestor holding pyproject.toml (the project checkout)."""
    for d in [start, *start.parents]:
        if (d / "pyproject.toml").is_file():
            return d
    return None


def _find_model(exp_path: Path, model: str, source: str, where: str = "base.model") -> tuple[Path, Path]:
    """(model path, directory rerun commands run from): the model is looked up
    relative to the repo root, then to the experiment file's directory."""
    here = exp_path.resolve().parent
    root = _repo_root(here) or Path.cwd().resolve()
    m = Path(model)
    candidates = [m] if m.is_absolute() else [root / m, here / m]
    for c in candidates:
        if c.is_file():
            return c.resolve(), root
    looked = ", ".join(str(c) for c in candidates)
    raise ConfigError(source, where, f"no such model file {model!r} (looked for {looked})")


def _model_files(exp_path: Path, spec: ExperimentSpec, source: str) -> tuple[list[ModelFile], Path]:
    """The base model, or the machines of the one fleet axis (`models`)."""
    fleets = [(i, a) for i, a in enumerate(spec.axes) if a.models is not None]
    if len(fleets) > 1:
        raise ConfigError(source, f"axes.{fleets[1][0]}.models", f"a second fleet axis (axes.{fleets[0][0]} "
                          "already gives the models): one experiment has one fleet")
    if fleets and spec.base.model is not None:
        raise ConfigError(source, "base.model", f"axes.{fleets[0][0]}.models gives the machines: remove base.model "
                          "(base.overrides still apply to each machine)")
    if not fleets and spec.base.model is None:
        raise ConfigError(source, "base.model", "required field is missing (the model YAML every point starts "
                          "from, or a fleet axis with `models`)")
    named = [(f"axes.{fleets[0][0]}.models.{j}", m) for j, m in enumerate(fleets[0][1].models or [])] \
        if fleets else [("base.model", str(spec.base.model))]
    out, root = [], exp_path.resolve().parent
    for where, m in named:
        path, root = _find_model(exp_path, m, source, where)
        raw = read_yaml(path)
        if not isinstance(raw, dict):
            raise ConfigError(source, where, f"{path} is not a model (no mapping at the top level)")
        out.append(ModelFile(path, _model_ref(path, root), raw, where))
    return out, root


def _model_ref(model_path: Path, root: Path) -> str:
    try:
        return str(model_path.relative_to(root))
    except ValueError:
        return str(model_path)


# ---------------------------------------------------------------- axes
def _resolve_axes(spec: ExperimentSpec, source: str, refs: list[str]) -> list[Axis]:
    axes = [_fleet_axis(a, f"axes.{i}", source, refs) if a.models is not None else _grid_axis(a, f"axes.{i}", source)
            for i, a in enumerate(spec.axes)]
    if spec.sample is not None:
        axes += _sample_axes(spec.sample, spec.seed, source)
    return axes


def _fleet_axis(a: AxisSpec, where: str, source: str, refs: list[str]) -> Axis:
    """A fleet: one value per model file, shown by the file's stem (its path
    when two stems agree); sets no key (the point's model is chosen instead)."""
    others = [k for k in ("key", "values", "range", "linked") if getattr(a, k) is not None]
    if others:
        raise ConfigError(source, f"{where}.{others[0]}", "a fleet axis (models) takes a name and the model "
                          f"files only: remove {others[0]}")
    if not a.name:
        raise ConfigError(source, f"{where}.name", "required field is missing (a fleet axis needs a column name, "
                          "e.g. machine)")
    _no_duplicates(refs, f"{where}.models", source, what="model file")
    stems = [Path(r).stem for r in refs]
    labels = stems if len(set(stems)) == len(stems) else refs
    return Axis(a.name, where, (), tuple({} for _ in refs), tuple(labels), tuple(labels), "", "models")


def _grid_axis(a: AxisSpec, where: str, source: str) -> Axis:
    given = [k for k in ("values", "range", "linked") if getattr(a, k) is not None]
    if len(given) != 1:
        raise ConfigError(source, where, "give exactly one of values, range, linked or models"
                          + (f" (got {', '.join(given)})" if given else ""))
    if a.linked is not None:
        return _linked_axis(a, where, source)
    if not a.key:
        raise ConfigError(source, f"{where}.key", "required field is missing (the dotted model key this axis sets)")
    _check_key(a.key, f"{where}.key", source)
    name = a.name or a.key
    if a.values is not None:
        values = list(a.values)
        unit, column = _column_values(values)
        display = [_display(v) for v in values]
    else:
        values, unit, column, display = _range_values(a.range, f"{where}.range", source)
    # Duplicates are equal values (1ms and 1000us), not equal labels: a label may be rounded.
    _no_duplicates(display, f"{where}.{given[0]}", source, keys=[_exact(c, d) for c, d in zip(column, display)])
    _check_column(column, f"{where}.{given[0]}", source)
    settings = tuple({a.key: v} for v in values)
    return Axis(name, where, (a.key,), settings, tuple(column), tuple(display), unit, given[0])


def _linked_axis(a: AxisSpec, where: str, source: str) -> Axis:
    if a.key is not None:
        raise ConfigError(source, f"{where}.key", "a linked axis sets the keys of each value: remove key")
    if not a.name:
        raise ConfigError(source, f"{where}.name", "required field is missing (a linked axis needs a column name)")
    settings, labels, keys = [], [], []
    for j, item in enumerate(a.linked):
        at = f"{where}.linked.{j}"
        if "label" not in item:
            raise ConfigError(source, f"{at}.label", "required field is missing (each linked value needs a label)")
        label = item["label"]
        if not isinstance(label, (str, int, float)) or isinstance(label, bool):
            raise ConfigError(source, f"{at}.label", f"expected a string, got {type(label).__name__}")
        sets = {str(k): v for k, v in item.items() if k != "label"}
        if not sets:
            raise ConfigError(source, at, "no dotted key to set besides the label")
        for k in sets:
            _check_key(k, f"{at}.{k}", source)
            if k not in keys:
                keys.append(k)
        settings.append(sets)
        labels.append(str(label))
    _no_duplicates(labels, f"{where}.linked", source, what="label")
    return Axis(a.name, where, tuple(keys), tuple(settings), tuple(labels), tuple(labels), "", "linked")


def _check_key(key: str, where: str, source: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*", key):
        raise ConfigError(source, where, f"{key!r} is not a dotted model key such as devices.nic0.start")


def _no_duplicates(items: Any, where: str, source: str, what: str = "value", keys: Any = None) -> None:
    """Refuse an item given twice; `keys` (default the items) say which are equal."""
    seen: dict[Any, str] = {}
    for item, key in zip(items, items if keys is None else keys):
        if key in seen:
            same = f" (equal to {seen[key]!r})" if seen[key] != item else ""
            raise ConfigError(source, where, f"duplicate {what} {item!r}{same}")
        seen[key] = item


def _exact(column: Any, display: str) -> Any:
    """What makes two axis values equal: the exact column value (seconds, bytes, a number), else the text."""
    if isinstance(column, (int, float, str, bool)) or column is None:
        return (type(column).__name__ == "str", column)
    return (True, display)


def _check_column(column: Any, where: str, source: str) -> None:
    """The axis column must fit the results table (Parquet): an integer past
    64 bits would fail only when the first row is saved, mid-sweep."""
    import pyarrow as pa
    try:
        pa.array(list(column))
    except (OverflowError, pa.ArrowInvalid, pa.ArrowTypeError) as e:
        big = next((v for v in column if isinstance(v, int) and not -2**63 <= v < 2**64), None)
        what = f"{big} does not fit a 64-bit integer column" if big is not None else f"the values cannot be " \
            f"one column ({e})"
        raise ConfigError(source, where, f"{what} of the results table: write it as a float (e.g. "
                          f"{float(big) if big is not None else 1e20:g}) or with a unit") from None


def _kind_of(values: list[Any]) -> str:
    """'number', 'duration', 'size' or 'other': how the values are written."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return "number"
    if present and all(isinstance(v, str) and _is_duration(v) for v in present):
        return "duration"
    # Sizes need a unit on at least one value, so "2004"/"2005" stay strings.
    if present and all(isinstance(v, str) and _is_size(v) for v in present) and \
            any(not v.strip().isdigit() for v in present):
        return "size"
    return "other"


def _is_duration(v: str) -> bool:
    try:
        parse_duration(v)
        return True
    except ValueError:
        return False


def _is_size(v: str) -> bool:
    try:
        parse_size(v)
        return True
    except ValueError:
        return False


def _column_values(values: list[Any]) -> tuple[str, list[Any]]:
    """(unit, column values): durations in seconds, sizes in bytes, else as written."""
    kind = _kind_of(values)
    if kind == "duration":
        return "s", [None if v is None else parse_duration(v) / 1e9 for v in values]
    if kind == "size":
        return "bytes", [None if v is None else parse_size(v) for v in values]
    if kind == "number":
        return "", list(values)
    return "", [None if v is None else (v if isinstance(v, (str, bool)) else _display(v)) for v in values]


def _display(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return _number_text(v)
    return json.dumps(v, separators=(",", ":"), sort_keys=True)


def _number_text(x: float) -> str:
    if isinstance(x, int) or (isinstance(x, float) and x.is_integer() and abs(x) < 1e15):
        return str(int(x))
    return f"{x:.6g}"


def _endpoints(start: Any, stop: Any, where: str, source: str) -> tuple[str, float, float]:
    """(kind, start, stop) in base units (ns, bytes or plain numbers)."""
    kind = _kind_of([start, stop])
    if kind == "duration":
        return kind, parse_duration(start), parse_duration(stop)
    if kind == "size":
        return kind, parse_size(start), parse_size(stop)
    if kind == "number":
        return kind, start, stop
    for v in (start, stop):
        if isinstance(v, str) and _TOO_LARGE.match(v):
            raise ConfigError(source, where, f"duration {v!r} is too large")
    raise ConfigError(source, where, f"start/low and stop/high must both be numbers, durations (5ms) "
                      f"or sizes (16M); got {start!r} and {stop!r}")


def _spaced(lo: float, hi: float, steps: int, scale: str, where: str, source: str) -> list[float]:
    if steps == 1:
        return [lo]
    if scale == "log":
        if lo <= 0 or hi <= 0:
            raise ConfigError(source, f"{where}.scale", "a log scale needs positive start and stop")
        return [lo * (hi / lo) ** (i / (steps - 1)) for i in range(steps)]
    return [lo + (hi - lo) * i / (steps - 1) for i in range(steps)]


def _range_values(r: RangeSpec, where: str, source: str) -> tuple[list[Any], str, list[Any], list[str]]:
    kind, lo, hi = _endpoints(r.start, r.stop, where, source)
    raw = _spaced(lo, hi, r.steps, r.scale, where, source)
    return _typed(kind, raw, integral=all(isinstance(x, int) for x in (r.start, r.stop)))


def _typed(kind: str, raw: list[float], integral: bool) -> tuple[list[Any], str, list[Any], list[str]]:
    """(model values, unit, column values, display) of numbers in base units."""
    if kind == "duration":
        ns = [round(x) for x in raw]
        exact = [fmt_duration_exact(n) for n in ns]
        return exact, "s", [n / 1e9 for n in ns], _labels([fmt_duration(n, sep="") for n in ns], exact)
    if kind == "size":
        b = [round(x) for x in raw]
        return [fmt_size(n) for n in b], "bytes", b, [fmt_size(n) for n in b]
    vals = [round(x) if integral and abs(x - round(x)) < 1e-9 else float(f"{x:.12g}") for x in raw]
    return vals, "", vals, _labels([_number_text(v) for v in vals], [repr(v) for v in vals])


def _labels(rounded: list[str], exact: list[str]) -> list[str]:
    """Rounded labels (10.5us), or exact ones (10500ns) for the whole axis when
    rounding would give two values one label (a fine axis, 0..20000 ns in 1 ns steps)."""
    if len(set(rounded)) == len(rounded) or len(set(exact)) < len(exact):
        return rounded
    return exact


def _sample_axes(s: SampleSpec, master: int, source: str) -> list[Axis]:
    """The sampled axes: column j of a `count` x `len(axes)` design in [0, 1)."""
    rng = random.Random(derive_seed(master, "sample", s.method))
    n, d = s.count, len(s.axes)
    if s.method == "lhs":
        # One value per stratum on every axis, strata paired at random (McKay 1979).
        cols = []
        for _ in range(d):
            perm = list(range(n))
            rng.shuffle(perm)
            cols.append([(perm[i] + rng.random()) / n for i in range(n)])
    else:
        rows = [[rng.random() for _ in range(d)] for _ in range(n)]
        cols = [[row[j] for row in rows] for j in range(d)]
    axes = []
    for j, a in enumerate(s.axes):
        where = f"sample.axes.{j}"
        _check_key(a.key, f"{where}.key", source)
        kind, lo, hi = _endpoints(a.low, a.high, where, source)
        if a.scale == "log" and (lo <= 0 or hi <= 0):
            raise ConfigError(source, f"{where}.scale", "a log scale needs positive low and high")
        raw = [lo * (hi / lo) ** u if a.scale == "log" else lo + (hi - lo) * u for u in cols[j]]
        # Integer endpoints give integer values (for fields such as descriptors).
        integral = all(isinstance(x, int) and not isinstance(x, bool) for x in (a.low, a.high))
        values, unit, column, display = _typed(kind, [round(x) for x in raw] if integral else raw, integral)
        _check_column(column, where, source)
        axes.append(Axis(a.name or a.key, where, (a.key,), tuple({a.key: v} for v in values),
                         tuple(column), tuple(display), unit, "sample"))
    return axes


def _check_names(spec: ExperimentSpec, axes: list[Axis], source: str) -> None:
    """Axis names are unique columns; a later axis must not replace what an earlier one set."""
    seen: dict[str, str] = {}
    for a in axes:
        if a.name in seen:
            raise ConfigError(source, f"{a.field}.name", f"axis name {a.name!r} is also used by {seen[a.name]}")
        if a.name in ID_COLUMNS + TAIL_COLUMNS + RECORD_COLUMNS or a.name.startswith(RECORD_PREFIXES):
            raise ConfigError(source, f"{a.field}.name", f"{a.name!r} is a results column: choose another name")
        seen[a.name] = a.field
    set_by: dict[str, str] = {}
    for a in axes:
        for k in a.keys:
            for earlier, where in set_by.items():
                if earlier == k:
                    raise ConfigError(source, a.field, f"key {k!r} is already swept by {where}")
                if earlier.startswith(k + "."):
                    raise ConfigError(source, a.field, f"setting {k!r} would replace {earlier!r} swept by "
                                      f"{where}: list this axis before it")
        for k in a.keys:
            set_by[k] = a.field
    _check_metrics(spec, source)
    _check_plots(spec, [a.name for a in axes], source)


def _known_metric(name: str) -> bool:
    return name in RECORD_COLUMNS or (name.startswith(RECORD_PREFIXES) and name not in RECORD_PREFIXES)


def _check_metrics(spec: ExperimentSpec, source: str) -> None:
    if spec.metrics == "all":
        return
    for i, m in enumerate(spec.metrics):
        if "*" in m or "?" in m or _known_metric(m):
            continue
        close = difflib.get_close_matches(m, RECORD_COLUMNS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(source, f"metrics.{i}", f"unknown metric {m!r}{hint}; metrics are {', '.join(RECORD_COLUMNS)}"
                          f", or {', '.join(p + '<name>' for p in RECORD_PREFIXES)}, or a glob such as t_*")


def kept(spec: ExperimentSpec, column: str) -> bool:
    """Does the experiment keep this run_record column?"""
    if spec.metrics == "all" or column in ALWAYS_KEPT:
        return True
    return any(fnmatch.fnmatchcase(column, pat) for pat in spec.metrics)


def plot_metric(p: PlotSpec) -> str:
    return p.metric or ("capture_failure_rate" if p.kind == "heatmap" else "dump_fidelity")


def _check_plots(spec: ExperimentSpec, names: list[str], source: str) -> None:
    from kdumpsim.names import OUTCOMES
    rates = set(RATE_METRICS) | {f"{o}_rate" for o in OUTCOMES}
    files: set[str] = set()
    for i, p in enumerate(spec.plots):
        where = f"plots.{i}"
        for attr in ("x", "y", "by", "facet"):
            v = getattr(p, attr)
            if v is not None and v not in names:
                close = difflib.get_close_matches(v, names, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(source, f"{where}.{attr}", f"no axis named {v!r}{hint}; axes: {', '.join(names)}")
        if p.kind == "heatmap" and p.y is None:
            raise ConfigError(source, f"{where}.y", "required field is missing (a heatmap needs a y axis)")
        if p.kind != "heatmap" and p.y is not None:
            raise ConfigError(source, f"{where}.y", f"only a heatmap has a y axis (a {p.kind} plot draws the metric)")
        metric = plot_metric(p)
        if p.kind != "outcomes" and metric not in rates:
            if not _known_metric(metric) or metric == "outcome":
                close = difflib.get_close_matches(metric, sorted(rates) + list(RECORD_COLUMNS), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(source, f"{where}.metric", f"unknown metric {metric!r}{hint}")
            if not kept(spec, metric):
                raise ConfigError(source, f"{where}.metric", f"{metric!r} is not kept: add it to metrics")
        fname = plot_file(p)
        if fname in files:
            raise ConfigError(source, f"{where}.file", f"two plots write {fname}")
        files.add(fname)


def plot_file(p: PlotSpec) -> str:
    if p.file:
        return p.file
    parts = [p.kind, p.x] + ([p.y] if p.y else []) + ([plot_metric(p)] if p.kind != "outcomes" else [])
    return "-".join(parts) + ".png"


# ---------------------------------------------------------------- points
def _expand(exp: Experiment) -> PointGrid:
    """Grid axes crossed (first axis outermost), crossed with the sampled points."""
    grid = [a for a in exp.axes if not a.field.startswith("sample.")]
    sampled = [a for a in exp.axes if a.field.startswith("sample.")]
    asked = math.prod(len(a.settings) for a in grid) * (exp.spec.sample.count if sampled else 1)
    if asked > MAX_POINTS or asked * exp.spec.replicates > MAX_RUNS:
        raise ConfigError(exp.source, "axes", f"{asked} points x {exp.spec.replicates} replicates asked for; an "
                          f"experiment may have at most {MAX_POINTS} points and {MAX_RUNS} runs: fewer values, "
                          "or a random or Latin-hypercube sample")
    fleet = len(exp.models) > 1 or grid_is_fleet(grid)
    return PointGrid(grid, sampled, exp.spec.sample.count if sampled else 1,
                     [m.ref for m in exp.models] if fleet else [])


def grid_is_fleet(grid: list[Axis]) -> bool:
    return any(a.source == "models" for a in grid)


class PointGrid(Sequence[Point]):
    """The points of an experiment, made when asked for (never all held in
    memory): point i is the i-th combination of itertools.product over the
    grid axes' values (the last axis fastest), each crossed with the sampled
    rows; so ids, labels and seeds are those of the list it replaces.
    `machines`: a fleet's model files (empty without a fleet)."""

    def __init__(self, grid: list[Axis], sampled: list[Axis], rows: int, machines: list[str]):
        self.grid, self.sampled, self.rows, self.machines = grid, sampled, rows, machines
        self.sizes = [len(a.settings) for a in grid]
        self.count = math.prod(self.sizes) * rows

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[Point]:
        return (self._point(i) for i in range(self.count))

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self._point(i) for i in range(*index.indices(self.count))]
        i = index + self.count if index < 0 else index
        if not 0 <= i < self.count:
            raise IndexError(f"point {index} out of range ({self.count} points)")
        return self._point(i)

    def _point(self, i: int) -> Point:
        combo, row = divmod(i, self.rows)
        choice = []
        for size in reversed(self.sizes):
            combo, j = divmod(combo, size)
            choice.append(j)
        chosen = list(zip(self.grid, reversed(choice))) + [(a, row) for a in self.sampled]
        overrides: dict[str, Any] = {}
        model = 0
        for axis, j in chosen:
            overrides.update(axis.settings[j])
            model = j if axis.source == "models" else model
        params = {axis.name: axis.column[j] for axis, j in chosen}
        display = {axis.name: axis.display[j] for axis, j in chosen}
        label = " ".join(f"{k}={v}" for k, v in display.items()) or "base"
        machine = self.machines[model] if self.machines else None
        return Point(i, label, params, display, overrides, model, machine)


def model_with(exp: Experiment, pairs: list[tuple[str, Any]], model: int = 0) -> ModelConfig:
    """Model `model` (the base, or a fleet's machine) with `pairs` applied one
    after the other, as `kdumpsim run --set` applies them (so a rerun command
    gives the same model)."""
    mf = exp.models[model]
    # Copy only the top-level entries the keys reach (a big iomem list is shared, not copied per point).
    raw = dict(mf.raw)
    for top in dict.fromkeys(key.split(".", 1)[0] for key, _ in pairs):
        if top in raw:
            raw[top] = copy.deepcopy(raw[top])
    for key, value in pairs:
        set_dotted(raw, key, copy.deepcopy(value))
    return validate_model(raw, str(mf.path))


def build_point_model(exp: Experiment, point: Point) -> ModelConfig:
    """Validate one point's model; errors name the experiment file and the point."""
    where = f"point {point.index} ({point.label})"
    try:
        return model_with(exp, exp.all_overrides(point), point.model)
    except ConfigError as e:
        if len(exp.axes) == 1:        # the point is value `index` of the one axis: name it as _check_base does
            axis = exp.axes[0]
            at = axis.value_field(point.index)
            raise ConfigError(exp.source, f"{at}: {e.field}" if e.field else at,
                              f"{e.message} (value {axis.display[point.index]!r})") from None
        raise ConfigError(exp.source, f"{where}: {e.field}" if e.field else where, e.message) from None


def _check_base(exp: Experiment) -> None:
    """Each model (the base, or each machine of a fleet) alone with the base
    overrides, then each axis value on it: errors name the model file, the
    axis value and the field."""
    base = list(exp.spec.base.overrides.items())
    fleet = len(exp.models) > 1 or grid_is_fleet(exp.axes)
    for m, mf in enumerate(exp.models):
        on = f" (on {mf.ref}, {mf.field})" if fleet else ""
        for at, pairs in ([(mf.field, [])] if fleet else []) + [("base.overrides", base)]:
            try:
                model_with(exp, pairs, m)
            except ConfigError as e:
                raise ConfigError(exp.source, f"{at}: {e.field}" if e.field else at,
                                  e.message + (f" (in {mf.ref})" if fleet else "")) from None
        for axis in exp.axes:
            if axis.source == "models" or len(exp.axes) == 1:
                continue     # one axis: each point is one of its values, checked by build_point_model
            for j, sets in enumerate(axis.settings):
                try:
                    model_with(exp, base + list(sets.items()), m)
                except ConfigError as e:
                    at = axis.value_field(j)
                    raise ConfigError(exp.source, f"{at}: {e.field}" if e.field else at,
                                      f"{e.message} (value {axis.display[j]!r}{on})") from None


def models_sha256(exp: Experiment) -> str:
    """A digest of every point's resolved model (what a run simulates): editing
    any model file (each machine of a fleet), or anything it resolves to,
    changes it."""
    h = hashlib.sha256()
    for p in exp.points:
        h.update(json.dumps(exp.model_for(p.index).model_dump(mode="json"), sort_keys=True, default=str).encode())
        h.update(b"\n")
    return h.hexdigest()


def layout_key(cfg: ModelConfig) -> str:
    """What the memory layout depends on: everything but timing and when devices run."""
    d = cfg.model_dump(mode="json", exclude={"timing", "name", "description"})
    for dev in d.get("devices", []):
        dev.pop("start", None)
        dev.pop("duration", None)
    return json.dumps(d, sort_keys=True)


def check_layouts(exp: Experiment) -> None:
    """Every point's model laid out once before anything runs (reservation,
    kexec segments, DMA buffers); an impossible one is the experiment's error."""
    checked: set[bytes] = set()      # digests, so memory stays small for many points
    for point in exp.points:
        cfg = exp.model_for(point.index)
        key = hashlib.sha256(layout_key(cfg).encode()).digest()
        if key in checked:
            continue
        try:
            lay_out(cfg)
        except LayoutError as e:
            hint = _setter_hint(exp, point, e.field)
            raise ConfigError(exp.source, f"point {point.index} ({point.label}): {e.field}",
                              f"{e}{hint}") from None
        checked.add(key)


def lay_out(cfg: ModelConfig) -> None:
    """Build the machine, load kexec and map the DMA buffers of `cfg` (seed 0)."""
    import simpy

    from kdumpsim.crash.devices import make_engines
    from kdumpsim.crash.run import CrashRun
    from kdumpsim.kexec import load_capture_kernel
    from kdumpsim.kexec.load import KEXEC_LOAD_TIME
    from kdumpsim.machine.layout import Machine
    from kdumpsim.trace.events import Trace
    machine = Machine(cfg, 0)
    load_capture_kernel(machine)
    make_engines(CrashRun(machine, simpy.Environment(initial_time=KEXEC_LOAD_TIME), Trace()))


def _setter_hint(exp: Experiment, point: Point, field_: str) -> str:
    """' (set by axis placement=...)' when an axis sets the failing field."""
    for axis in exp.axes:
        if any(k == field_ or field_.startswith(k + ".") or k.startswith(field_ + ".") for k in axis.keys):
            return f" (set by {axis.field} {axis.name}={point.display.get(axis.name)})"
    return ""


def point_count_text(exp: Experiment) -> str:
    """'180 points [placement (5) x ...] x 8 replicates = 1440 runs'."""
    sizes = " x ".join(f"{a.name} ({len(a.settings)})" for a in exp.axes if not a.field.startswith("sample."))
    if exp.spec.sample:
        sizes += (" x " if sizes else "") + f"{exp.spec.sample.method} sample ({exp.spec.sample.count})"
    return f"{len(exp.points)} points [{sizes or 'base only'}] x {exp.spec.replicates} replicates = " \
           f"{len(exp.points) * exp.spec.replicates} runs"

