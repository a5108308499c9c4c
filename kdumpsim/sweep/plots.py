"""An experiment's plots (PNG, matplotlib Agg), as its `plots:` section asks.

Axes are categorical, in the order the experiment file lists their values;
every plotted value is aggregated over the axes not drawn. Kinds:

  heatmap   a metric over two axes (x, y), e.g. capture-failure rate over
            reservation placement x DMA start
  line      a metric against one axis, one line per value of `by`, with 95%
            intervals (Wilson for rates, normal for means)
  outcomes  stacked outcome shares per value of one axis
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # no pyplot: no global backend, so a notebook's inline plots still show

from kdumpsim.atomic import atomic_write
from kdumpsim.names import CAPTURE_OK
from kdumpsim.sweep.design import Experiment, PlotSpec, plot_file, plot_metric
from kdumpsim.sweep.results import Z95, wilson

OUTCOME_COLOURS = {"ok": "#4daf4a", "ok_dump_corrupted": "#a6d96a", "cpu_state_missing": "#fee08b",
                   "vmcore_unavailable": "#fdae61", "capture_kernel_corrupted": "#d7301f",
                   "purgatory_mismatch": "#7b3294"}


def draw_plots(exp: Experiment, df: pd.DataFrame, out: Path) -> list[Path]:
    """Draw every plot of the experiment into `out`; returns the files written."""
    df = with_axis_labels(exp, df)
    files = []
    for spec in exp.spec.plots:
        fig = {"heatmap": heatmap, "line": line, "outcomes": outcomes}[spec.kind](exp, df, spec)
        path = Path(out) / plot_file(spec)
        with atomic_write(path, "wb") as fh:
            fig.savefig(fh, format="png", dpi=110, bbox_inches="tight")
        files.append(path)
    return files


def with_axis_labels(exp: Experiment, df: pd.DataFrame) -> pd.DataFrame:
    """Add `<axis>__label`: each run's axis value as displayed (categorical, file order)."""
    df = df.copy()
    for axis in exp.axes:
        labels = {p.index: p.display[axis.name] for p in exp.points}
        order = list(dict.fromkeys(axis.display))
        df[f"{axis.name}__label"] = pd.Categorical(df["point"].map(labels), categories=order, ordered=True)
    return df


def metric_value(g: pd.DataFrame, metric: str) -> tuple[float, float, float]:
    """(value, ci low, ci high) of a metric over a group of runs."""
    n = len(g)
    if n == 0:
        return (math.nan, math.nan, math.nan)
    hits = _rate_hits(g, metric)
    if hits is not None:
        k = int(hits.sum())
        lo, hi = wilson(k, n)
        return (k / n, lo, hi)
    if metric not in g:
        return (math.nan, math.nan, math.nan)
    x = pd.to_numeric(g[metric], errors="coerce").dropna()
    if x.empty:
        return (math.nan, math.nan, math.nan)
    mean = float(x.mean())
    half = Z95 * float(x.std(ddof=1)) / math.sqrt(len(x)) if len(x) > 1 else 0.0
    return (mean, mean - half, mean + half)


def _rate_hits(g: pd.DataFrame, metric: str) -> pd.Series | None:
    """The runs a rate metric counts, or None for a plain numeric column."""
    if metric == "capture_failure_rate":
        return ~g["outcome"].isin(list(CAPTURE_OK))
    if metric == "dump_corrupted_rate":
        return g["outcome"] == "ok_dump_corrupted"
    if metric == "detected_rate":
        return g["detected"].astype(bool)
    if metric.endswith("_rate") and metric not in g:
        return g["outcome"] == metric.removesuffix("_rate")
    return None


def _panels(exp: Experiment, df: pd.DataFrame, spec: PlotSpec, width: float, height: float):
    """(figure, [(axes, facet value or None, rows)]) one panel per facet value."""
    if spec.facet is None:
        fig = Figure(figsize=(width, height))
        ax = fig.subplots()
        return fig, [(ax, None, df)]
    values = list(dict.fromkeys(exp.axis(spec.facet).display))
    fig = Figure(figsize=(width * len(values), height))
    axs = fig.subplots(1, len(values), squeeze=False, sharey=True)
    col = f"{spec.facet}__label"
    return fig, [(ax, v, df[df[col] == v]) for ax, v in zip(axs[0], values)]


def _title(spec: PlotSpec, default: str, fig: Any) -> None:
    fig.suptitle(spec.title or default, y=1.04 if spec.facet else 0.98)


def heatmap(exp: Experiment, df: pd.DataFrame, spec: PlotSpec) -> Any:
    metric = plot_metric(spec)
    assert spec.x is not None and spec.y is not None      # the schema requires both for a heatmap
    xs = list(dict.fromkeys(exp.axis(spec.x).display))
    ys = list(dict.fromkeys(exp.axis(spec.y).display))
    fig, panels = _panels(exp, df, spec, 1.1 * len(xs) + 2.5, 0.55 * len(ys) + 2)
    is_rate = metric.endswith("_rate")
    for ax, facet, rows in panels:
        grid = np.full((len(ys), len(xs)), np.nan)
        groups = rows.groupby([f"{spec.y}__label", f"{spec.x}__label"], observed=True)
        for (yv, xv), g in groups:
            grid[ys.index(yv), xs.index(xv)] = metric_value(g, metric)[0]
        im = ax.imshow(grid, cmap="magma_r" if is_rate else "viridis", aspect="auto",
                       vmin=0 if is_rate else None, vmax=1 if is_rate else None)
        for (i, j), v in np.ndenumerate(grid):
            if not math.isnan(v):
                ax.text(j, i, f"{v:.2f}" if is_rate or abs(v) < 100 else f"{v:.3g}", ha="center", va="center",
                        fontsize=8, color="white" if (is_rate and v > 0.5) else "black")
        ax.set_xticks(range(len(xs)), xs, rotation=30, ha="right")
        ax.set_yticks(range(len(ys)), ys)
        ax.set_xlabel(_axis_label(exp, spec.x))
        ax.set_ylabel(_axis_label(exp, spec.y))
        if facet is not None:
            ax.set_title(f"{spec.facet}={facet}")
    fig.colorbar(im, ax=[p[0] for p in panels], label=metric)
    _title(spec, f"{metric} over {spec.y} x {spec.x}", fig)
    return fig


def line(exp: Experiment, df: pd.DataFrame, spec: PlotSpec) -> Any:
    metric = plot_metric(spec)
    xs = list(dict.fromkeys(exp.axis(spec.x).display))
    series = list(dict.fromkeys(exp.axis(spec.by).display)) if spec.by else [None]
    fig, panels = _panels(exp, df, spec, 1.0 * len(xs) + 3.5, 4)
    for ax, facet, rows in panels:
        for k, s in enumerate(series):
            part = rows if s is None else rows[rows[f"{spec.by}__label"] == s]
            vals = [metric_value(part[part[f"{spec.x}__label"] == x], metric) for x in xs]
            y = np.array([v[0] for v in vals])
            err = np.array([[v[0] - v[1] for v in vals], [v[2] - v[0] for v in vals]])
            offset = (k - (len(series) - 1) / 2) * 0.06     # keep error bars of series apart
            ax.errorbar(np.arange(len(xs)) + offset, y, yerr=np.nan_to_num(err), marker="o", capsize=3,
                        label=f"{spec.by}={s}" if s is not None else None)
        ax.set_xticks(range(len(xs)), xs, rotation=30, ha="right")
        ax.set_xlabel(_axis_label(exp, spec.x))
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        if facet is not None:
            ax.set_title(f"{spec.facet}={facet}")
        if spec.by:
            ax.legend(fontsize=8)
    _title(spec, f"{metric} against {spec.x} (mean, 95% interval)", fig)
    return fig


def outcomes(exp: Experiment, df: pd.DataFrame, spec: PlotSpec) -> Any:
    from kdumpsim.names import OUTCOMES
    xs = list(dict.fromkeys(exp.axis(spec.x).display))
    fig, panels = _panels(exp, df, spec, 0.8 * len(xs) + 4, 4)
    for ax, facet, rows in panels:
        bottom = np.zeros(len(xs))
        for outcome in OUTCOMES:
            share = np.array([_share(rows[rows[f"{spec.x}__label"] == x], outcome) for x in xs])
            if not np.nansum(share):
                continue
            ax.bar(range(len(xs)), share, bottom=bottom, color=OUTCOME_COLOURS.get(outcome), label=outcome)
            bottom += np.nan_to_num(share)
        ax.set_xticks(range(len(xs)), xs, rotation=30, ha="right")
        ax.set_xlabel(_axis_label(exp, spec.x))
        ax.set_ylabel("share of runs")
        ax.set_ylim(0, 1)
        if facet is not None:
            ax.set_title(f"{spec.facet}={facet}")
    handles: dict[str, Any] = {}
    for ax, _, _ in panels:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    fig.tight_layout(rect=(0, 0.1, 1, 1))     # room for the legend under the panels
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=len(handles), fontsize=8)
    _title(spec, f"outcomes by {spec.x}", fig)
    return fig


def _share(g: pd.DataFrame, outcome: str) -> float:
    return float((g["outcome"] == outcome).mean()) if len(g) else math.nan


def _axis_label(exp: Experiment, name: str) -> str:
    axis = exp.axis(name)
    return f"{name} ({', '.join(axis.keys)})" if len(axis.keys) == 1 and axis.keys[0] != name else name
