"""`kdumpsim recommend MODEL`: which crashkernel= and capture options for this machine.

Sweeps, within a run budget, through an experiment generated for the model
(run_experiment): the reservation's size and placement (automatic, low
@64M, above 4 GiB @6G when RAM reaches that far), the capture kernel's IOMMU
mode (copy_tables vs off, when the model has an IOMMU) and whether the kdump
initramfs carries the NIC drivers. Ranks the candidates by capture failure
rate (every outcome but ok and ok_dump_corrupted), then by the share of
damaged dumps, and says, for each that loses, which outcome and mechanism
(results column `mechanisms`) breaks it.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kdumpsim.names import CAPTURE_OK
from kdumpsim.units import GiB, MiB, fmt_size

NIC_KINDS = ("nic_rx_ring", "virtio_net")


@dataclass
class Candidate:
    label: str
    overrides: dict[str, Any]
    cmdline: str
    runs: int = 0
    failed: int = 0
    corrupted: int = 0
    why: str = ""

    @property
    def rate(self) -> float:
        return self.failed / self.runs if self.runs else 1.0


def candidates(model_path: str) -> tuple[list[Candidate], list[str]]:
    """Every candidate that lays out on this model, and why the others do not."""
    from kdumpsim.config.model import load_model, model_from_dict, read_yaml
    from kdumpsim.errors import KdumpsimError
    from kdumpsim.kexec import load_capture_kernel
    from kdumpsim.machine.layout import Machine
    cfg = load_model(model_path)
    raw = read_yaml(model_path)
    ram = [(r.start, r.end + 1) for r in cfg.memory.iomem if r.type == "System RAM"]
    total = sum(e - s for s, e in ram)
    sizes = [s for s in (64 * MiB, 128 * MiB, 160 * MiB, 256 * MiB, 512 * MiB) if s <= total // 3][-3:]
    places: list[tuple[str, str]] = []
    for size in sizes:
        places.append((f"crashkernel={fmt_size(size)}", fmt_size(size)))
        places.append((f"crashkernel={fmt_size(size)}@64M", f"{fmt_size(size)}@64M"))
        if any(s <= 6 * GiB and 6 * GiB + size <= e for s, e in ram):
            places.append((f"crashkernel={fmt_size(size)}@6G", f"{fmt_size(size)}@6G"))
    iommus: list[tuple[str, str | None]] = [("", None)]
    if cfg.topology.iommu is not None:
        iommus = [("", "copy_tables"), (" intel_iommu=off" if cfg.topology.iommu.vendor == "intel"
                                        else " amd_iommu=off", "off")]
    nics = [d.name for d in cfg.devices if d.kind in NIC_KINDS]
    drivers: list[tuple[str, bool | None]] = [("", None)]
    if nics:
        drivers = [(" [initramfs without NIC drivers]", False), (" [initramfs with NIC drivers]", True)]
    out, refused = [], []
    for ptext, ck in places:
        for itext, mode in iommus:
            for dtext, with_nics in drivers:
                ov: dict[str, Any] = {"kexec.crashkernel": ck}
                if mode is not None:
                    ov["topology.iommu.capture_kernel"] = mode
                if with_nics is not None:
                    for n in nics:
                        ov[f"devices.{n}.capture_driver"] = with_nics
                label = f"{ptext}{itext}{dtext}"
                try:
                    load_capture_kernel(Machine(model_from_dict(raw, model_path, ov), 0))
                except KdumpsimError as e:
                    refused.append(f"{label}: does not lay out ({str(e).split(': ', 1)[-1]})")
                    continue
                out.append(Candidate(label, ov, f"{ptext}{itext}".strip()))
    return out, refused


def recommend(model_path: str, runs: int = 200, seed: int = 1, workers: int | None = 1,
              out_dir: str | Path | None = None) -> tuple[list[Candidate], list[str]]:
    """Run the sweep; candidates best first, and the ones that do not lay out."""
    from kdumpsim.errors import ConfigError
    from kdumpsim.sweep.runner import run_experiment
    cands, refused = candidates(model_path)
    if not cands:
        raise ConfigError(model_path, "kexec.crashkernel", "no candidate reservation lays out on this model: "
                          + "; ".join(refused[:3]))
    replicates = max(1, runs // len(cands))
    exp = {"name": "recommend", "description": f"kdumpsim recommend {model_path}",
           "base": {"model": str(Path(model_path).resolve())}, "seed": seed, "replicates": replicates,
           "vmcores": "none", "axes": [{"name": "candidate", "linked": [
               {"label": c.label, **c.overrides} for c in cands]}]}
    with tempfile.TemporaryDirectory(prefix="kdumpsim-recommend-") as tmp:
        path = Path(tmp) / "recommend.yaml"
        path.write_text(yaml.safe_dump(exp, sort_keys=False))
        dest = Path(out_dir) if out_dir else Path(tmp) / "out"
        import contextlib
        import sys
        with contextlib.redirect_stdout(sys.stderr):     # the sweep's own summary: not the answer
            result = run_experiment(path, dest, workers=workers, progress=False)
        df = result.table
    by_label = {c.label: c for c in cands}
    for label, rows in df.groupby("candidate"):
        c = by_label[str(label)]
        c.runs = len(rows)
        bad = rows[~rows["outcome"].isin(CAPTURE_OK)]
        c.failed = len(bad)
        c.corrupted = int((rows["outcome"] == "ok_dump_corrupted").sum())
        if len(bad):
            top = bad.groupby(["outcome", "mechanisms"]).size().sort_values(ascending=False)
            (outcome, mech), n = top.index[0], int(top.iloc[0])
            c.why = f"{outcome} in {n} of {c.runs} runs (mechanism: {mech})"
        elif c.corrupted:
            mech = rows[rows["outcome"] == "ok_dump_corrupted"]["mechanisms"].mode().iloc[0]
            c.why = f"no failed capture; {c.corrupted} of {c.runs} dumps damaged by DMA (mechanism: {mech})"
    cands.sort(key=lambda c: (c.rate, c.corrupted / c.runs if c.runs else 1, len(c.label)))
    return cands, refused


def report(cands: list[Candidate], refused: list[str], alternatives: int = 3) -> str:
    from kdumpsim.sweep.results import wilson
    best = cands[0]
    lo, hi = wilson(best.failed, best.runs)
    lines = [f"recommended  {best.cmdline}{best.label[len(best.cmdline):]}",
             f"             failed captures {best.failed}/{best.runs} = {best.rate:.1%} "
             f"(95% Wilson interval {lo:.1%}-{hi:.1%}); damaged dumps {best.corrupted}/{best.runs}"]
    if best.why:
        lines.append(f"             {best.why}")
    lines.append("next best")
    for c in cands[1:1 + alternatives]:
        lo, hi = wilson(c.failed, c.runs)
        lines.append(f"  {c.label}: {c.failed}/{c.runs} failed ({lo:.1%}-{hi:.1%}), "
                     f"{c.corrupted} damaged" + (f"; {c.why}" if c.why else ""))
    rest = cands[1 + alternatives:]
    ties = [c for c in rest if (c.failed, c.corrupted) == (best.failed, best.corrupted)]
    losers = [c for c in rest if c not in ties]
    if ties:
        lines.append(f"as good within this budget ({len(ties)}): " + "; ".join(c.label for c in ties))
    if losers:
        lines.append("why the others lose")
        lines += [f"  {c.label}: {c.why}" for c in losers]
    if refused:
        lines.append("not run")
        lines += [f"  {r}" for r in refused]
    lines.append("assumes      the model's traffic and timing; candidates differ only in the options above")
    return "\n".join(lines)
