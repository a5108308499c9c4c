"""An experiment's plots (PNG, matplotlib Agg), as its `plots:` section asks.

Axes are categorical, in the order the experiment file lists their values;
every plotted value is aggregated over the axes not drawn. Kinds:

  heatmap   a metric over two axes (x, y), e.g. capture-failure rate over
            reservation placement x DMA start; every cell says its share,
            its k/n runs and its 95% Wilson interval (or mean, +-, n)
  line      a metric against one axis, one line per value of `by`, with 95%
            intervals (Wilson for rates, normal for means)
  outcomes  stacked outcome shares per value of one axis, n over each bar

What a reader sees: titles and axis labels in words with units; damage as
changed pages per million dumped pages (`dump_fidelity` is drawn that way:
a fidelity of 0.9997 is 300 changed pages per million) on axes that start at
0 without offset notation; when the x axis is a device's DMA duration and
the lines are device kinds, one panel per kind (duration means something
different for each kind, said under the panel's title); colour-blind-safe
palettes (cividis, Okabe-Ito); sized for a page (6.5 in wide, 150 dpi).
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # no pyplot: no global backend, so a notebook's inline plots still show
from matplotlib.ticker import FuncFormatter, ScalarFormatter

from kdumpsim.atomic import atomic_write
from kdumpsim.names import CAPTURE_OK
from kdumpsim.sweep.design import Axis, Experiment, PlotSpec, plot_file, plot_metric
from kdumpsim.sweep.results import Z95, wilson

PAGE_WIDTH = 6.5          # inches: a page's text width
DPI = 150
# Okabe-Ito (colour-blind safe), one colour per outcome, good to bad.
OUTCOME_COLOURS = {"ok": "#009E73", "ok_dump_corrupted": "#56B4E9", "cpu_state_missing": "#F0E442",
                   "vmcore_unavailable": "#E69F00", "capture_kernel_corrupted": "#D55E00",
                   "capture_kernel_crashed": "#0072B2", "capture_oom": "#000000", "purgatory_mismatch": "#CC79A7"}
SERIES_COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
SERIES_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
RATE_CMAP = "cividis"
MEAN_CMAP = "viridis"
PER_MILLION = 1e6
# What a device's `duration` means, per device kind (kdumpsim.crash.dma).
DURATION_MEANING = {
    "nic_rx_ring": "duration: receiving stops when it ends or when the RX ring's buffers are used up, "
                   "whichever comes first",
    "storage": "duration: the same commands in flight complete spread over it, so a longer one "
               "puts fewer of them before the driver reset stops the rest",
    "cyclic": "duration: the engine writes every period until it ends (no driver stops it), "
              "so a longer one means more writes",
}
METRIC_TEXT = {   # metric -> (what it is, axis / colour bar label)
    "capture_failure_rate": ("Capture failures", "share of runs with no usable dump"),
    "dump_corrupted_rate": ("Dumps with changed pages",
                            "share of runs whose dump has at least one changed page"),
    "detected_rate": ("Corruption detected", "share of runs where the corruption was detected"),
    "dump_fidelity": ("Damage to the dump", "changed pages per million dumped pages"),
    "corrupted_bytes": ("Bytes changed", "bytes changed after the panic"),
    "dump_pages_corrupted": ("Changed pages in the dump", "dumped pages that differ from RAM at the panic"),
    "dma_bytes_after_panic": ("DMA after the panic", "bytes DMA wrote after the panic"),
    "cpus_missing": ("CPUs without saved registers", "CPUs whose crash note is missing"),
    "analysable": ("Dumps the crash tools can analyse", "share of runs whose dump analyses"),
    "log_readable": ("Kernel log readable", "share of runs whose dump's kernel log reads"),
    "log_intact": ("Kernel log intact", "share of runs whose dump's kernel log is intact"),
    "filter_ok": ("makedumpfile filtering works", "share of runs makedumpfile -d 31 filters"),
    "filter_exact": ("Filtered dump exact", "share of runs whose filtered dump is exact"),
    "pagetables_ok": ("Page tables walk", "share of runs whose page tables walk"),
    "cma_hit_after_jump": ("DMA into the capture kernel's CMA memory after the jump",
                           "share of runs with such a write"),
    "cma_bytes_after_jump": ("Bytes DMA wrote into CMA memory after the jump", "bytes"),
    "cpus_note_overwritten": ("CPUs whose crash note DMA overwrote", "CPUs"),
}


def draw_plots(exp: Experiment, df: pd.DataFrame, out: Path) -> list[Path]:
    """Draw every plot of the experiment into `out`; returns the files written."""
    df = with_axis_labels(exp, df)
    files = []
    for spec in exp.spec.plots:
        fig = figure(exp, df, spec)
        path = Path(out) / plot_file(spec)
        with atomic_write(path, "wb") as fh:
            fig.savefig(fh, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.08)
        files.append(path)
    return files


def figure(exp: Experiment, df: pd.DataFrame, spec: PlotSpec) -> Any:
    """The Figure of one plot spec (df with the axis label columns, see with_axis_labels)."""
    return {"heatmap": heatmap, "line": line, "outcomes": outcomes}[spec.kind](exp, df, spec)


def with_axis_labels(exp: Experiment, df: pd.DataFrame) -> pd.DataFrame:
    """Add `<axis>__label`: each run's axis value as displayed (categorical, file order)."""
    df = df.copy()
    for axis in exp.axes:
        labels = {p.index: p.display[axis.name] for p in exp.points}
        order = list(dict.fromkeys(axis.display))
        df[f"{axis.name}__label"] = pd.Categorical(df["point"].map(labels), categories=order, ordered=True)
    return df


# ---------------------------------------------------------------- values
def metric_value(g: pd.DataFrame, metric: str) -> tuple[float, float, float]:
    """(value, ci low, ci high) of a metric over a group of runs."""
    v = metric_stats(g, metric)
    return (v["value"], v["lo"], v["hi"])


def metric_stats(g: pd.DataFrame, metric: str) -> dict[str, Any]:
    """value, lo, hi (95%), n (runs counted), k (hits, rates only) and rate (bool) of a metric.
    `dump_fidelity` comes out as changed pages per million dumped pages."""
    none = {"value": math.nan, "lo": math.nan, "hi": math.nan, "n": 0, "k": None, "rate": False}
    if len(g) == 0:
        return none | {"rate": is_rate(g, metric)}
    hits = _rate_hits(g, metric)
    if hits is not None:
        n, k = len(hits), int(hits.sum())
        if n == 0:
            return none | {"rate": True}
        lo, hi = wilson(k, n)
        return {"value": k / n, "lo": min(lo, k / n), "hi": max(hi, k / n), "n": n, "k": k, "rate": True}
    if metric not in g:
        return none
    x = pd.to_numeric(g[metric], errors="coerce").dropna()
    if metric == "dump_fidelity":
        x = (1 - x) * PER_MILLION
    if x.empty:
        return none
    mean = float(x.mean())
    half = Z95 * float(x.std(ddof=1)) / math.sqrt(len(x)) if len(x) > 1 else 0.0
    lo = mean - half
    if metric == "dump_fidelity" or float(x.min()) >= 0:
        lo = max(lo, 0.0)         # a count cannot go below 0
    return {"value": mean, "lo": lo, "hi": mean + half, "n": len(x), "k": None, "rate": False}


def is_rate(df: pd.DataFrame, metric: str) -> bool:
    return metric.endswith("_rate") or (metric in df and _bool_column(df[metric]) is not None)


def _bool_column(col: pd.Series) -> pd.Series | None:
    present = col.dropna()
    if present.empty or not all(isinstance(v, (bool, np.bool_)) for v in present):
        return None
    return present.astype(bool)


def _rate_hits(g: pd.DataFrame, metric: str) -> pd.Series | None:
    """The runs a rate metric counts (True = counted as a hit), or None for a plain numeric column."""
    if metric == "capture_failure_rate":
        return ~g["outcome"].isin(list(CAPTURE_OK))
    if metric == "dump_corrupted_rate":
        return g["outcome"] == "ok_dump_corrupted"
    if metric == "detected_rate":
        return g["detected"].astype(bool)
    if metric.endswith("_rate") and metric not in g:
        return g["outcome"] == metric.removesuffix("_rate")
    if metric in g:
        return _bool_column(g[metric])       # analysable, log_readable, ...: share of runs where true
    return None


def metric_text(metric: str) -> tuple[str, str]:
    """(title words, axis label) of a metric."""
    if metric in METRIC_TEXT:
        return METRIC_TEXT[metric]
    if metric.endswith("_rate"):
        o = metric.removesuffix("_rate")
        return (f"Runs ending {o}", f"share of runs ending {o}")
    unit = " (s)" if metric.startswith("t_") else (" (bytes)" if "bytes" in metric else "")
    words = metric.replace("_", " ")
    return (words[:1].upper() + words[1:], f"{words}{unit}")


def axis_label(exp: Experiment, name: str) -> str:
    """An axis in words: its name, what it sets, its unit."""
    axis = exp.axis(name)
    words = name.replace("_", " ")
    unit = {"s": "after the panic" if name.endswith("start") else "", "bytes": ""}.get(axis.unit, "")
    keys = axis.keys[0] if len(axis.keys) == 1 and axis.keys[0] != name else ""
    extra = ", ".join(x for x in (unit, keys) if x)
    return f"{words} ({extra})" if extra else words


def _runs_text(ns: list[int]) -> str:
    ns = [n for n in ns if n]
    if not ns:
        return "no runs"
    lo, hi = min(ns), max(ns)
    return f"n = {lo} runs each" if lo == hi else f"n = {lo}-{hi} runs each"


# ---------------------------------------------------------------- layout
def _device_kind(exp: Experiment, axis: Axis, value: str) -> str | None:
    """The device kind a (linked) axis value puts in the model, if it sets a device."""
    for p in exp.points:
        if p.display.get(axis.name) != value:
            continue
        for key, v in p.overrides.items():
            if key.startswith("devices.") and isinstance(v, dict) and "kind" in v:
                return str(v["kind"])
        return None
    return None


def _duration_by_kind(exp: Experiment, spec: PlotSpec) -> bool:
    """A line plot of a device's duration with one line per device kind: better one panel per kind."""
    if spec.kind != "line" or spec.facet or not spec.by:
        return False
    x = exp.axis(spec.x)
    if not any(k.startswith("devices.") and k.endswith(".duration") for k in x.keys):
        return False
    by = exp.axis(spec.by)
    kinds = {_device_kind(exp, by, v) for v in by.display}
    return None not in kinds and len(kinds) > 1


def _panels(exp: Experiment, df: pd.DataFrame, facet: str | None, height: float, sharey: bool = True,
            width: float = PAGE_WIDTH):
    """(figure, [(axes, facet value or None, rows)]): one panel per facet value, up to 3 a row."""
    if facet is None:
        fig = Figure(figsize=(width, height), layout="constrained")
        return fig, [(fig.subplots(), None, df)]
    values = list(dict.fromkeys(exp.axis(facet).display))
    ncols = min(3, len(values))
    nrows = math.ceil(len(values) / ncols)
    fig = Figure(figsize=(width, height * nrows), layout="constrained")
    axs = fig.subplots(nrows, ncols, squeeze=False, sharey=sharey)
    flat = list(axs.flat)
    for ax in flat[len(values):]:
        ax.set_visible(False)
    col = f"{facet}__label"
    return fig, [(ax, v, df[df[col] == v]) for ax, v in zip(flat, values)]


def _panel_title(exp: Experiment, ax: Any, facet: str, value: str, width_in: float) -> None:
    axis = exp.axis(facet)
    kind = _device_kind(exp, axis, value)
    head = f"{facet.replace('_', ' ')}: {value}" + (f" ({kind})" if kind and kind != value else "")
    ax.set_title(head, fontsize=8.5)


def _plain_axis(ax: Any, axis: str = "y") -> None:
    """Plain numbers on an axis: no offset (1e-5+9.997e-1) and no scientific notation."""
    fmt = ScalarFormatter(useOffset=False)
    fmt.set_scientific(False)
    (ax.yaxis if axis == "y" else ax.xaxis).set_major_formatter(fmt)


def _percent_axis(ax: Any, axis: str = "y") -> None:
    (ax.yaxis if axis == "y" else ax.xaxis).set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0%}"))


def _suptitle(fig: Any, spec: PlotSpec, default: str, sub: str = "") -> None:
    text = spec.title or default
    if sub:
        text += "\n" + sub
    fig.suptitle(text, fontsize=9.5)


def _wrap(text: str, width_in: float, size: float) -> str:
    return "\n".join(textwrap.wrap(text, max(20, int(width_in * 72 / (size * 0.55)))))


# ---------------------------------------------------------------- heatmap
def heatmap(exp: Experiment, df: pd.DataFrame, spec: PlotSpec) -> Any:
    metric = plot_metric(spec)
    assert spec.x is not None and spec.y is not None      # the schema requires both for a heatmap
    xs = list(dict.fromkeys(exp.axis(spec.x).display))
    ys = list(dict.fromkeys(exp.axis(spec.y).display))
    rate = is_rate(df, metric)
    facets = len(set(exp.axis(spec.facet).display)) if spec.facet else 1
    ncols = min(3, facets)
    cell_w = (PAGE_WIDTH - 1.6) / (ncols * len(xs))          # inches per cell
    cell_h = 0.46 if cell_w >= 0.42 else 0.40
    fig, panels = _panels(exp, df, spec.facet, cell_h * len(ys) + 1.25)
    size = 7 if cell_w >= 0.55 else 6
    vmax = None
    if not rate:
        vmax = max((metric_stats(g, metric)["value"] for _, g in
                    df.groupby([f"{spec.y}__label", f"{spec.x}__label"], observed=True)), default=1.0)
        vmax = vmax if vmax and not math.isnan(vmax) else 1.0
    ns: list[int] = []
    im = None
    for ax, facet, rows in panels:
        grid = np.full((len(ys), len(xs)), np.nan)
        groups = rows.groupby([f"{spec.y}__label", f"{spec.x}__label"], observed=True)
        stats = {}
        for (yv, xv), g in groups:
            s = metric_stats(g, metric)
            grid[ys.index(yv), xs.index(xv)] = s["value"]
            stats[(ys.index(yv), xs.index(xv))] = s
            ns.append(s["n"])
        im = ax.imshow(grid, cmap=RATE_CMAP if rate else MEAN_CMAP, aspect="auto", vmin=0,
                       vmax=1 if rate else vmax)
        for (i, j), v in np.ndenumerate(grid):
            cell = stats.get((i, j))
            if cell is None or math.isnan(v):
                ax.text(j, i, "no runs", ha="center", va="center", fontsize=size - 1, color="#555555")
                continue
            light = (v / (1 if rate else vmax)) < 0.55          # cividis/viridis are dark at the bottom
            ax.text(j, i, _cell_text(cell, cell_w), ha="center", va="center", fontsize=size, linespacing=1.05,
                    color="white" if light else "black")
        ax.set_xticks(range(len(xs)), xs, rotation=30 if max(map(len, xs)) > 5 else 0,
                      ha="right" if max(map(len, xs)) > 5 else "center", fontsize=7.5)
        ax.set_yticks(range(len(ys)), ys, fontsize=7.5)
        if facet is None:
            ax.set_xlabel(axis_label(exp, spec.x), fontsize=8)
        if ax.get_subplotspec().is_first_col():
            ax.set_ylabel(axis_label(exp, spec.y), fontsize=8)
        if facet is not None:
            _panel_title(exp, ax, spec.facet or "", facet, PAGE_WIDTH / ncols)
    what, label = metric_text(metric)
    if spec.facet:
        fig.supxlabel(axis_label(exp, spec.x), fontsize=8)
    cb = fig.colorbar(im, ax=[p[0] for p in panels], shrink=0.9, pad=0.02, aspect=25)
    cb.set_label(label, fontsize=7.5)
    cb.ax.tick_params(labelsize=7)
    if rate:
        cb.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0%}"))
    says = "share, runs, 95% Wilson interval" if rate else "mean, 95% interval, runs"
    by = f", one panel per {spec.facet.replace('_', ' ')}" if spec.facet else ""
    _suptitle(fig, spec, f"{what} by {spec.y.replace('_', ' ')} and {spec.x.replace('_', ' ')}{by}",
              f"each cell: {says}; {_runs_text(ns)}")
    return fig


def _cell_text(s: dict[str, Any], cell_w: float) -> str:
    if s["rate"]:
        lo, hi = 100 * s["lo"], 100 * s["hi"]
        return f"{100 * s['value']:.0f}%\n{s['k']}/{s['n']}\n[{lo:.0f}-{hi:.0f}]"
    v = s["value"]
    return f"{_num(v)}\n±{_num((s['hi'] - s['lo']) / 2)}\nn={s['n']}"


def _num(v: float) -> str:
    if math.isnan(v):
        return "-"
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:.3g}M"
    if a >= 1e4:
        return f"{v / 1e3:.3g}k"
    return f"{v:.3g}"


# ---------------------------------------------------------------- line
def line(exp: Experiment, df: pd.DataFrame, spec: PlotSpec) -> Any:
    metric = plot_metric(spec)
    xs = list(dict.fromkeys(exp.axis(spec.x).display))
    by, facet = spec.by, spec.facet
    per_kind = _duration_by_kind(exp, spec)
    if per_kind:
        by, facet = None, spec.by          # one device kind per panel
    series = list(dict.fromkeys(exp.axis(by).display)) if by else [None]
    rate = is_rate(df, metric)
    fig, panels = _panels(exp, df, facet, 3.0, sharey=rate)
    ns: list[int] = []
    for ax, fv, rows in panels:
        for k, s in enumerate(series):
            part = rows if s is None else rows[rows[f"{by}__label"] == s]
            vals = [metric_stats(part[part[f"{spec.x}__label"] == x], metric) for x in xs]
            ns += [v["n"] for v in vals]
            y = np.array([v["value"] for v in vals])
            err = np.array([[v["value"] - v["lo"] for v in vals], [v["hi"] - v["value"] for v in vals]])
            offset = (k - (len(series) - 1) / 2) * 0.08 if len(series) > 1 else 0.0   # keep error bars apart
            ax.errorbar(np.arange(len(xs)) + offset, y, yerr=np.nan_to_num(err), capsize=3, lw=1.2, ms=4,
                        marker=SERIES_MARKERS[k % len(SERIES_MARKERS)], color=SERIES_COLOURS[k % len(SERIES_COLOURS)],
                        label=f"{by.replace('_', ' ')}: {s}" if by and s is not None else None)
        ax.set_xticks(range(len(xs)), xs, fontsize=7.5)
        ax.set_xlim(-0.5, len(xs) - 0.5)
        if facet is None:
            ax.set_xlabel(axis_label(exp, spec.x), fontsize=8)
        elif by:        # the legend is under the panels: a short label on each
            ax.set_xlabel(spec.x.replace("_", " "), fontsize=8)
        ax.tick_params(axis="y", labelsize=7.5)
        if rate:
            ax.set_ylim(-0.03, 1.03)
            _percent_axis(ax)
        else:
            ax.set_ylim(bottom=0)
            top = ax.get_ylim()[1]
            if top <= 0 or not math.isfinite(top):
                ax.set_ylim(0, 1)
            _plain_axis(ax)
        ax.grid(alpha=0.3, lw=0.5)
        if fv is not None:
            _panel_title(exp, ax, facet or "", fv, PAGE_WIDTH / min(3, len(panels)))
            kind = _device_kind(exp, exp.axis(facet or ""), fv) if per_kind else None
            if kind in DURATION_MEANING:      # what "duration" means for this kind, under the panel title
                head = ax.get_title()
                meaning = _wrap(DURATION_MEANING[kind], PAGE_WIDTH / min(3, len(panels)) - 0.3, 6.2)
                ax.set_title("")
                ax.set_title(head, fontsize=8.5, loc="left", pad=8 + 7.6 * (meaning.count("\n") + 1))
                ax.text(0, 1.03, meaning, transform=ax.transAxes, ha="left", va="bottom", fontsize=6.2,
                        color="#333333", linespacing=1.1)
    what, label = metric_text(metric)
    for ax, _, _ in panels:
        if ax.get_subplotspec().is_first_col():
            ax.set_ylabel(label if len(label) < 32 else _wrap(label, 1.6, 8), fontsize=8)
    if facet and not by:
        fig.supxlabel(axis_label(exp, spec.x), fontsize=8)
    if by:
        handles, labels = panels[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 4), fontsize=7.5,
                   frameon=False)
    how = "share of runs, 95% Wilson intervals" if rate else "mean, 95% intervals"
    if metric == "dump_fidelity":
        how = "mean over runs that produced a dump (0 = every dumped page equals RAM at the panic), 95% intervals"
    against = spec.x.replace("_", " ")
    per = f", one panel per {facet.replace('_', ' ')}" if facet else ""
    scales = "; each panel has its own y scale" if facet and not rate else ""
    _suptitle(fig, spec, f"{what} against {against}{per}",
              _wrap(f"{how}; {_runs_text(ns)}{scales}", PAGE_WIDTH, 9.5))
    return fig


# ---------------------------------------------------------------- outcomes
def outcomes(exp: Experiment, df: pd.DataFrame, spec: PlotSpec) -> Any:
    from kdumpsim.names import OUTCOMES
    xs = list(dict.fromkeys(exp.axis(spec.x).display))
    fig, panels = _panels(exp, df, spec.facet, 2.7)
    handles: dict[str, Any] = {}
    for ax, facet, rows in panels:
        bottom = np.zeros(len(xs))
        for outcome in OUTCOMES:
            share = np.array([_share(rows[rows[f"{spec.x}__label"] == x], outcome) for x in xs])
            if not np.nansum(share):
                continue
            bars = ax.bar(range(len(xs)), share, bottom=bottom, color=OUTCOME_COLOURS.get(outcome, "#999999"),
                          edgecolor="white", linewidth=0.4, width=0.75)
            handles.setdefault(outcome, bars)
            bottom += np.nan_to_num(share)
        for j, x in enumerate(xs):
            n = int((rows[f"{spec.x}__label"] == x).sum())
            ax.text(j, 1.01, f"n={n}", ha="center", va="bottom", fontsize=6, color="#333333")
        crowded = max(map(len, xs)) * 7.5 * 0.6 / 72 > 0.8 * (PAGE_WIDTH - 0.8) / (len(panels) * len(xs))
        ax.set_xticks(range(len(xs)), xs, fontsize=7.5, rotation=45 if crowded else 0,
                      ha="right" if crowded else "center")
        ax.set_xlabel(axis_label(exp, spec.x) if facet is None else spec.x.replace("_", " "), fontsize=8)
        ax.set_ylim(0, 1.09)
        ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
        _percent_axis(ax)
        ax.tick_params(axis="y", labelsize=7.5)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        if ax.get_subplotspec().is_first_col():
            ax.set_ylabel("share of runs", fontsize=8)
        if facet is not None:
            _panel_title(exp, ax, spec.facet or "", facet, PAGE_WIDTH / min(3, len(panels)))
    order = [o for o in OUTCOMES if o in handles]
    fig.legend([handles[o] for o in order], order, loc="outside lower center", ncol=min(3, len(order)),
               fontsize=7, frameon=False)
    by = f", one panel per {spec.facet.replace('_', ' ')}" if spec.facet else ""
    _suptitle(fig, spec, f"How the runs ended, by {spec.x.replace('_', ' ')}{by}",
              "share of runs per outcome (what each outcome means: report.html)")
    return fig


def _share(g: pd.DataFrame, outcome: str) -> float:
    return float((g["outcome"] == outcome).mean()) if len(g) else math.nan
