"""`kdumpsim recommend MODEL`: which crashkernel= and capture options for this machine.

Two sweeps through run_experiment, within a run budget:

1. Reservations (half the budget): crashkernel= size x placement, from the
   PLACEMENTS table (automatic, `,high` with its low region, `@64M`, `@6G`,
   an extra `,cma` area), with the model's own capture options.
2. Options (the rest): the best reservation of sweep 1 x every combination
   of the OPTIONS table (the capture kernel's IOMMU mode, the drivers the
   kdump initramfs carries, `reset_devices`, ...).

Candidates are ranked by capture failure rate (every outcome but ok and
ok_dump_corrupted). Ties are broken by TIE_BREAK, which the report prints.
For each loser, the report says which outcome, mechanism (results column
`mechanisms`) and memory region (`dma_hit_bytes_<region>`) breaks it.

An option is one line in OPTIONS: a function from the model to its choices.
`field_option` builds one for a model field with a few values.
"""

from __future__ import annotations

import contextlib
import itertools
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kdumpsim.names import CAPTURE_OK
from kdumpsim.units import GiB, MiB, fmt_size

TIE_BREAK = ("fewer damaged dumps, then the smaller reservation, then fewer options changed from the model, "
             "then the placement order automatic, ,high, @64M, @6G, ,cma")


# ---------------------------------------------------------------- the option table
@dataclass(frozen=True)
class Choice:
    text: str                      # what it adds to the label ("" for the model's own value)
    overrides: dict[str, Any]      # dotted key -> value
    changed: bool                  # differs from the model as given


@dataclass(frozen=True)
class Option:
    name: str
    what: str
    choices: Callable[[Any], list[Choice]]   # ModelConfig -> its choices (fewer than 2: not swept)


def field_option(name: str, key: str, values: tuple[Any, ...], what: str = "") -> Option:
    """An option over one model field: each value a choice (labelled key=value)."""
    def choices(cfg: Any) -> list[Choice]:
        obj: Any = cfg
        for part in key.split("."):
            obj = getattr(obj, part, None)
        return [Choice("" if v == obj else f"{key}={v}", {key: v}, v != obj) for v in values]
    return Option(name, what or key, choices)


def _iommu(cfg: Any) -> list[Choice]:
    io = cfg.topology.iommu
    if io is None:
        return []
    off = "amd_iommu=off" if io.vendor == "amd" else "intel_iommu=off"
    return [Choice("" if io.capture_kernel == "copy_tables" else "capture: iommu copy_tables",
                   {"topology.iommu.capture_kernel": "copy_tables"}, io.capture_kernel != "copy_tables"),
            Choice("" if io.capture_kernel == "off" else f"capture: {off}",
                   {"topology.iommu.capture_kernel": "off"}, io.capture_kernel != "off")]


def _drivers(kind: str) -> Callable[[Any], list[Choice]]:
    """The kdump initramfs with or without the drivers of every device of one kind."""
    def choices(cfg: Any) -> list[Choice]:
        devs = [d for d in cfg.devices if d.kind == kind]
        if not devs:
            return []
        names = ",".join(d.name for d in devs)
        out = []
        for carried in (True, False):
            same = all(d.capture_driver == carried for d in devs)
            text = "" if same else f"initramfs {'with' if carried else 'without'} {kind} driver ({names})"
            out.append(Choice(text, {f"devices.{d.name}.capture_driver": carried for d in devs}, not same))
        return out
    return choices


def _reset_devices(cfg: Any) -> list[Choice]:
    words = (cfg.kexec.append or "").split()
    if cfg.era != "modern":
        return []
    on = "reset_devices" in words
    without = " ".join(w for w in words if w != "reset_devices")
    return [Choice("" if on else "capture: reset_devices", {"kexec.append": " ".join([*words, "reset_devices"])
                                                           if not on else cfg.kexec.append}, not on),
            Choice("capture: no reset_devices" if on else "", {"kexec.append": without}, on)]


OPTIONS: tuple[Option, ...] = (
    Option("iommu", "the capture kernel's IOMMU mode (copy the first kernel's tables, or off)", _iommu),
    Option("nic_drivers", "the kdump initramfs carries the NIC drivers (e1000-style rings)", _drivers("nic_rx_ring")),
    Option("virtio_drivers", "the kdump initramfs carries virtio_net", _drivers("virtio_net")),
    Option("storage_drivers", "the kdump initramfs carries the NVMe driver", _drivers("storage")),
    Option("reset_devices", "reset_devices on the capture kernel's command line", _reset_devices),
    field_option("kexec_method", "kexec.method", ("kexec_load", "kexec_file_load"),
                 "the loading method (kexec -c or kexec -s)"),
    field_option("collector", "capture.collector", ("dd", "makedumpfile"),
                 "the dump collector (dd of /proc/vmcore, or makedumpfile -d 31)"),
)


# ---------------------------------------------------------------- reservations
@dataclass(frozen=True)
class Placement:
    name: str
    spec: Callable[[int, Any, list[tuple[int, int]]], dict[str, Any] | None]   # size, cfg, RAM -> overrides


def _fits(ram: list[tuple[int, int]], at: int, size: int) -> bool:
    return any(s <= at and at + size <= e for s, e in ram)


PLACEMENTS: tuple[Placement, ...] = (
    Placement("automatic", lambda size, cfg, ram: {"kexec.crashkernel": fmt_size(size)}),
    # crashkernel=X,high: above 4 GiB, plus a low region below it (crashkernel.py _reserve_low)
    Placement(",high", lambda size, cfg, ram: {"kexec.crashkernel": f"{fmt_size(size)},high"}
              if cfg.arch == "x86_64" and cfg.era == "modern" and any(e > 4 * GiB for _, e in ram) else None),
    Placement("@64M", lambda size, cfg, ram: {"kexec.crashkernel": f"{fmt_size(size)}@64M"}
              if _fits(ram, 64 * MiB, size) else None),
    Placement("@6G", lambda size, cfg, ram: {"kexec.crashkernel": f"{fmt_size(size)}@6G"}
              if _fits(ram, 6 * GiB, size) else None),
    # crashkernel=X plus crashkernel=X,cma: an extra area of the same size the capture kernel gets as RAM
    Placement(",cma", lambda size, cfg, ram: {"kexec.crashkernel": fmt_size(size),
                                              "kexec.crashkernel_cma": fmt_size(size)}
              if cfg.era == "modern" and cfg.arch == "x86_64" else None),
)
SIZES = (64 * MiB, 128 * MiB, 160 * MiB, 256 * MiB, 512 * MiB)


@dataclass
class Candidate:
    reservation: str               # the first kernel's crashkernel= words
    size: int
    placement: int                 # index in PLACEMENTS (the last tie-break)
    overrides: dict[str, Any]
    options: list[str] = field(default_factory=list)   # texts of the option choices that change the model
    changed: int = 0
    runs: int = 0
    failed: int = 0
    corrupted: int = 0
    why: str = ""

    @property
    def label(self) -> str:
        return "; ".join([self.reservation, *self.options])

    @property
    def rate(self) -> float:
        return self.failed / self.runs if self.runs else 1.0

    def rank(self) -> tuple:
        return (self.rate, self.corrupted / self.runs if self.runs else 1.0, self.size, self.changed,
                self.placement, self.label)


def _reservation_words(ov: dict[str, Any]) -> str:
    words = [f"crashkernel={ov['kexec.crashkernel']}"]
    if "kexec.crashkernel_cma" in ov:
        words.append(f"crashkernel={ov['kexec.crashkernel_cma']},cma")
    return " ".join(words)


def reservations(model_path: str) -> tuple[list[Candidate], list[str]]:
    """Sweep 1's candidates: every size x placement that lays out, and why the others do not."""
    from kdumpsim.config.model import load_model
    cfg = load_model(model_path)
    ram = [(r.start, r.end + 1) for r in cfg.memory.iomem if r.type == "System RAM"]
    total = sum(e - s for s, e in ram)
    sizes = [s for s in SIZES if s <= total // 3][-3:]
    out, refused = [], []
    for size in sizes:
        for i, pl in enumerate(PLACEMENTS):
            ov = pl.spec(size, cfg, ram)
            if ov is None:
                continue
            cand = Candidate(_reservation_words(ov), size, i, ov, changed=int(pl.name in (",high", ",cma")))
            problem = _lays_out(model_path, cand.overrides)
            if problem:
                refused.append(f"{cand.label}: does not lay out ({problem})")
            else:
                out.append(cand)
    return out, refused


def option_candidates(model_path: str, base: Candidate) -> tuple[list[Candidate], list[str], list[Option]]:
    """Sweep 2's candidates: `base`'s reservation x every combination of the options' choices."""
    from kdumpsim.config.model import load_model
    cfg = load_model(model_path)
    swept = [(o, cs) for o in OPTIONS if len(cs := o.choices(cfg)) >= 2]
    out, refused = [], []
    for combo in itertools.product(*(cs for _, cs in swept)):
        ov = dict(base.overrides)
        for ch in combo:
            ov.update(ch.overrides)
        cand = Candidate(base.reservation, base.size, base.placement, ov, [c.text for c in combo if c.text],
                         base.changed + sum(c.changed for c in combo))
        problem = _lays_out(model_path, ov)
        if problem:
            refused.append(f"{cand.label}: does not lay out ({problem})")
        else:
            out.append(cand)
    return out, refused, [o for o, _ in swept]


def _lays_out(model_path: str, overrides: dict[str, Any]) -> str | None:
    from kdumpsim.config.model import model_from_dict, read_yaml
    from kdumpsim.errors import KdumpsimError, LayoutError
    from kdumpsim.sweep.design import lay_out
    try:
        lay_out(model_from_dict(read_yaml(model_path), model_path, overrides))
    except LayoutError as e:
        return e.message
    except KdumpsimError as e:
        return str(e).split(": ", 1)[-1]      # ConfigError: "FILE: field: why"
    return None


# ---------------------------------------------------------------- running
def _sweep(model_path: str, cands: list[Candidate], runs: int, seed: int, workers: int | None,
           out_dir: Path | None, name: str) -> None:
    """Run the candidates as one experiment (a linked axis), filling runs/failed/why."""
    from kdumpsim.sweep.runner import run_experiment
    replicates = max(1, runs // len(cands))
    exp = {"name": name, "description": f"kdumpsim recommend {model_path}",
           "base": {"model": str(Path(model_path).resolve())}, "seed": seed, "replicates": replicates,
           "vmcores": "none", "axes": [{"name": "candidate", "linked": [
               {"label": c.label, **c.overrides} for c in cands]}]}
    with tempfile.TemporaryDirectory(prefix="kdumpsim-recommend-") as tmp:
        path = Path(tmp) / f"{name}.yaml"
        path.write_text(yaml.safe_dump(exp, sort_keys=False))
        dest = out_dir / name if out_dir else Path(tmp) / "out"
        with contextlib.redirect_stdout(sys.stderr):     # the sweep's own summary: not the answer
            df = run_experiment(path, dest, workers=workers, progress=False).table
    by_label = {c.label: c for c in cands}
    hit_cols = [col for col in df.columns if col.startswith("dma_hit_bytes_")]
    for label, rows in df.groupby("candidate"):
        c = by_label[str(label)]
        c.runs = len(rows)
        bad = rows[~rows["outcome"].isin(CAPTURE_OK)]
        c.failed = len(bad)
        c.corrupted = int((rows["outcome"] == "ok_dump_corrupted").sum())
        if len(bad):
            c.why = _why(bad, c.runs, hit_cols)
        elif c.corrupted:
            c.why = "no failed capture; " + _why(rows[rows["outcome"] == "ok_dump_corrupted"], c.runs, hit_cols)


def _why(rows: Any, runs: int, hit_cols: list[str]) -> str:
    """'<outcome> in N of M runs (mechanism: X; DMA hit: region, ...)' for the commonest failure."""
    top = rows.groupby(["outcome", "mechanisms"]).size().sort_values(ascending=False)
    (outcome, mech), n = top.index[0], int(top.iloc[0])
    these = rows[(rows["outcome"] == outcome) & (rows["mechanisms"] == mech)]
    regions = [col.removeprefix("dma_hit_bytes_") for col in hit_cols if (these[col].fillna(0) > 0).any()]
    return f"{outcome} in {n} of {runs} runs (mechanism: {mech}; DMA hit: {', '.join(regions) or 'none'})"


@dataclass
class Recommendation:
    ranked: list[Candidate]        # best first (both sweeps; the reservation winner's own-options run once)
    refused: list[str]
    options: list[Option]          # the options swept
    runs: int


def recommend(model_path: str, runs: int = 200, seed: int = 1, workers: int | None = 1,
              out_dir: str | Path | None = None) -> Recommendation:
    """Run both sweeps; candidates best first, and the ones that do not lay out."""
    from kdumpsim.errors import ConfigError
    dest = Path(out_dir) if out_dir else None
    first, refused = reservations(model_path)
    if not first:
        raise ConfigError(model_path, "kexec.crashkernel", "no candidate reservation lays out on this model: "
                          + "; ".join(refused[:3]))
    _sweep(model_path, first, max(len(first), runs // 2), seed, workers, dest, "recommend-reservations")
    first.sort(key=Candidate.rank)
    used = sum(c.runs for c in first)
    second, refused2, options = option_candidates(model_path, first[0])
    if second:
        _sweep(model_path, second, max(len(second), runs - used), seed, workers, dest, "recommend-options")
    ranked = sorted(second + first[1:], key=Candidate.rank) if second else first
    return Recommendation(ranked, refused + refused2, options, used + sum(c.runs for c in second))


# ---------------------------------------------------------------- the report
def _interval(c: Candidate) -> str:
    from kdumpsim.sweep.results import wilson
    lo, hi = wilson(c.failed, c.runs)
    return f"{c.failed}/{c.runs} = {c.rate:.1%} (95% Wilson interval {lo:.1%}-{hi:.1%})"


def _loses_on(c: Candidate, best: Candidate) -> str:
    """Why a candidate with the best's failure count ranks lower: the tie-break step."""
    if c.corrupted / c.runs > best.corrupted / best.runs:
        return f"ties on failures; more damaged dumps ({c.corrupted}/{c.runs})"
    if c.size > best.size:
        return f"ties; a larger reservation ({fmt_size(c.size)})"
    if c.changed > best.changed:
        return f"ties; more options changed ({c.changed})"
    return "ties; later in the placement order"


def command_lines(model_path: str, c: Candidate) -> list[str]:
    """The first kernel's and the capture kernel's command-line words, and the
    drivers the kdump initramfs carries, of one candidate."""
    from kdumpsim.config.model import model_from_dict, read_yaml
    cfg = model_from_dict(read_yaml(model_path), model_path, c.overrides)
    capture = (cfg.kexec.append or "").split()
    io = cfg.topology.iommu
    if io is not None and io.capture_kernel == "off":
        capture.append("amd_iommu=off" if io.vendor == "amd" else "intel_iommu=off")
    carried = [d.name for d in cfg.devices if d.capture_driver]
    return [f"first kernel    {c.reservation}",
            f"capture kernel  {' '.join(capture)}   (kexec -p --append, e.g. KDUMP_COMMANDLINE_APPEND)",
            f"kdump initramfs drivers of: {', '.join(carried) or 'none of the modelled devices'}"]


def report(rec: Recommendation, model_path: str, alternatives: int = 3) -> str:
    best = rec.ranked[0]
    lines = [f"recommended  {best.label}",
             *[f"             {line}" for line in command_lines(model_path, best)],
             f"             failed captures {_interval(best)}; damaged dumps {best.corrupted}/{best.runs}"]
    if best.why:
        lines.append(f"             {best.why}")
    lines.append(f"ranked by    failed captures, then {TIE_BREAK}")
    lines.append(f"swept        crashkernel= size x placement ({', '.join(p.name for p in PLACEMENTS)}); then "
                 "with the best reservation: " + ("; ".join(o.what for o in rec.options) or "no option applies")
                 + f" ({rec.runs} runs)")
    lines.append("next best")
    for c in rec.ranked[1:1 + alternatives]:
        lines.append(f"  {c.label}: failed {_interval(c)}, {c.corrupted} damaged"
                     + (f"; {c.why}" if c.why else "") + (f"; {_loses_on(c, best)}" if c.rate == best.rate else ""))
    rest = rec.ranked[1 + alternatives:]
    if rest:
        lines.append("why the others lose")
        for c in rest:
            reason = c.why if c.rate > best.rate else _loses_on(c, best)
            lines.append(f"  {c.label}: {c.failed}/{c.runs} failed; {reason}")
    if rec.refused:
        lines.append("not run")
        lines += [f"  {r}" for r in rec.refused]
    lines.append("assumes      the model's traffic and timing; candidates differ only in the options above")
    return "\n".join(lines)
