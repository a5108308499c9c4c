"""`report.html`: one experiment's results as one page a reader opens in a browser.

    DIR/report.html    the question (description), the manifest (model, seed,
                       axes, code version), what each outcome means, the
                       per-point summary table, the plots (PNG files beside it,
                       linked relative), the "(assumption)" defaults the model
                       rests on and the model's known simplifications

Plain HTML and inline CSS, no script and nothing fetched from the network;
every experiment run writes it (kdumpsim.sweep.runner).
"""

from __future__ import annotations

import html
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdumpsim.atomic import write_text
from kdumpsim.names import CAPTURE_OK, OUTCOMES
from kdumpsim.paths import ROOT
from kdumpsim.sweep.results import Share

# The README's "Known simplifications", in short: what the numbers do not include.
SIMPLIFICATIONS = (
    "The capture kernel's own memory use inside the reservation is not modelled: DMA into free reservation "
    "memory is reported but does not change the outcome.",
    "A capture kernel whose image, initrd or parameters changed after purgatory's check is counted as producing "
    "no dump; a real one may crash, hang or run on.",
    "/proc/vmcore's note walk uses the modern bounds check in both eras (2.6.13 had none).",
    "Kernel and initrd images are stand-in bytes, the same every run, not a real vmlinux.",
    "The first kernel's structures (page tables, struct page, log, utsname) exist for x86_64 only: no kallsyms, "
    "no KASLR, no 5-level paging.",
    "Device traffic follows a few simple patterns (an RX ring the dead driver never refills, storage commands in "
    "flight, a cyclic engine); real devices vary more.",
    "Times not found in a source are assumptions (below); outcomes that depend on when DMA lands relative to "
    "purgatory, driver init or the dump copy move with them.",
)
OUTCOME_SHORT = {"ok": "usable dump, intact", "ok_dump_corrupted": "usable dump, some pages changed"}


@dataclass(frozen=True)
class Assumption:
    name: str          # the constant in kdumpsim.defaults
    value: str         # as written there
    note: str          # its comment
    field: str | None  # the model field it is the default of (e.g. timing.capture_boot), if known


def assumptions() -> list[Assumption]:
    """Every default kdumpsim.defaults marks "(assumption)" (in its own comment or
    the comment block above it), with the model field it fills when config/model.py says."""
    from kdumpsim import defaults
    source = Path(defaults.__file__).read_text().splitlines()
    fields = _default_fields()
    # A comment block above an assignment speaks for it and for the siblings right after it
    # that differ only in their last word (DUMP_THROUGHPUT_2005, DUMP_THROUGHPUT_MODERN).
    out: list[Assumption] = []
    note, family, in_comment = "", None, False
    for line in source:
        stripped = line.strip()
        if not stripped:
            note, family, in_comment = "", None, False
            continue
        if stripped.startswith("#"):
            text = stripped.lstrip("#").strip()
            note = f"{note} {text}".strip() if in_comment else text
            family, in_comment = None, True
            continue
        in_comment = False
        m = re.match(r"^([A-Z][A-Z0-9_]*)\s*=\s*(.*?)\s*(?:#\s*(.*))?$", line)
        if not m:
            continue
        name, value, comment = m.group(1), m.group(2), m.group(3) or ""
        prefix = name.rsplit("_", 1)[0]
        if family is None and note:
            family = prefix
        elif family != prefix:
            note, family = "", None
        if "assumption" in comment.lower():
            out.append(Assumption(name, value, comment, fields.get(name)))
        elif "assumption" in note.lower():
            out.append(Assumption(name, value, (comment + "; " if comment else "") + note, fields.get(name)))
    return out


def _default_fields() -> dict[str, str]:
    """defaults constant -> model field, read from kdumpsim/config/model.py."""
    from kdumpsim.config import model as config_model
    section = {"TimingSpec": "timing", "TopologySpec": "topology", "BusSpec": "topology.buses[]",
               "KexecSpec": "kexec"}
    short = {"k": "kexec", "t": "timing", "topo": "topology", "bus": "topology.buses[]"}
    found: dict[str, str] = {}
    cls = None
    for line in Path(config_model.__file__).read_text().splitlines():
        m = re.match(r"^class (\w+)\(", line)
        if m:
            cls = m.group(1)
            continue
        m = re.match(r"^\s+(\w+): [^=]+= .*\bD\.([A-Z0-9_]+)\)", line)
        if m and cls in section:
            found.setdefault(m.group(2), f"{section[cls]}.{m.group(1)}")
            continue
        m = re.match(r"^\s+(\w+)\.(\w+) = .*", line)
        if m and m.group(1) in short:
            for const in re.findall(r"\bD\.([A-Z0-9_]+)", line):
                found.setdefault(const, f"{short[m.group(1)]}.{m.group(2)}")
    return found


def code_version() -> str:
    """kdumpsim's version and, in a git checkout, the commit (with -dirty for local changes)."""
    from kdumpsim import __version__
    try:
        r = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty", "--abbrev=12"],
                           capture_output=True, text=True, timeout=5, check=False)
        commit = r.stdout.strip() if r.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"kdumpsim {__version__}" + (f", git {commit}" if commit else "")


# ---------------------------------------------------------------- page
CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:60rem;margin:1.5rem auto;padding:0 1rem;
color:#1a1a1a;line-height:1.45}
h1{font-size:1.5rem;margin-bottom:.2rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:.8rem;margin:.5rem 0}
th,td{border:1px solid #ddd;padding:.15rem .4rem;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.scroll{overflow-x:auto}figure{margin:1rem 0}img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85rem;color:#444}code{font-size:.85em}.muted{color:#666;font-size:.85rem}
"""


def _e(v: Any) -> str:
    return html.escape(str(v))


def _table(head: list[str], rows: list[list[str]], numeric: set[int] | None = None, raw: bool = False) -> str:
    numeric = numeric or set()
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    thead = f"<thead><tr>{th}</tr></thead>" if any(head) else ""
    body = "".join("<tr>" + "".join(f"<td class=\"n\">{c if raw else _e(c)}</td>" if i in numeric
                                    else f"<td>{c if raw else _e(c)}</td>" for i, c in enumerate(r)) + "</tr>"
                   for r in rows)
    return f"<div class=\"scroll\"><table>{thead}<tbody>{body}</tbody></table></div>"


def _dict_table(rows: list[dict[str, Any]]) -> str:
    """A table of summary rows (dicts with the same keys); columns of numbers align right."""
    cols = list(rows[0])
    numeric = {i for i, c in enumerate(cols) if all(isinstance(r[c], (int, float, Share)) for r in rows)}
    return _table(cols, [[_cell(r[c]) for c in cols] for r in rows], numeric)


def _cell(v: Any) -> str:
    if isinstance(v, Share):
        lo, hi = v.ci
        return f"{100 * v.p:.0f}% [{100 * lo:.0f}–{100 * hi:.0f}]" if v.n else "–"
    if isinstance(v, float):
        if v != v:
            return "–"
        if v == int(v) and abs(v) >= 1:
            return f"{v:.0f}"
        return f"{v:.6f}".rstrip("0").rstrip(".") if abs(v) < 10 else f"{v:.0f}"
    return str(v)


def render(exp: Any, manifest: dict[str, Any], rows: list[dict[str, Any]], plots: list[Path],
           outcome_counts: dict[str, int], model_name: str = "", field_values: dict[str, str] | None = None,
           machines: list[dict[str, Any]] | None = None) -> str:
    """The page as text (see write_report)."""
    spec = exp.spec
    field_values = field_values or {}
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
             f"<title>{_e(spec.name)}: kdumpsim experiment report</title><style>{CSS}</style></head><body>",
             f"<h1>{_e(spec.name)}</h1>",
             f"<p>{_e(spec.description or 'A kdumpsim experiment.')}</p>"]
    total = sum(outcome_counts.values())
    failed = sum(v for k, v in outcome_counts.items() if k not in CAPTURE_OK)
    parts.append(f"<p class=\"muted\">{total} runs ({manifest.get('points', '?')} points × "
                 f"{manifest.get('replicates', '?')} replicates), {failed} without a usable dump. "
                 f"Status: {_e(manifest.get('status', '?'))}.</p>")

    # manifest
    axes = "; ".join(f"{a['name']} ({', '.join(a['keys'])}): {', '.join(map(str, a['values']))}"
                     for a in manifest.get("axes", []))
    man = [["model", f"{manifest.get('model', '')}" + (f" (name: {model_name})" if model_name else "")],
           ["master seed", str(manifest.get("master_seed", ""))],
           ["replicates", str(manifest.get("replicates", ""))],
           ["axes", axes or "none"],
           ["experiment file", f"{manifest.get('experiment', '')} (sha256 {manifest.get('experiment_sha256', '')})"],
           ["code version", manifest.get("code_version") or code_version()],
           ["packages", ", ".join(f"{k} {v}" for k, v in sorted(manifest.get("versions", {}).items()))],
           ["ran", f"{manifest.get('started', '?')} to {manifest.get('finished', '?')}, "
                   f"{manifest.get('executor', '')}, {manifest.get('workers', '?')} workers"],
           ["re-run one run", "the rerun column of results.parquet: kdumpsim run MODEL --seed S --set ..."]]
    parts.append("<h2 id=\"manifest\">What ran</h2>" + _table(["", ""], man))

    # plots
    if plots:
        figs = []
        for p in plots:
            name = p.name
            figs.append(f"<figure><a href=\"{_e(name)}\"><img src=\"{_e(name)}\" alt=\"{_e(name)}\" "
                        f"loading=\"eager\"></a><figcaption>{_e(name)} (click for full size)</figcaption></figure>")
        parts.append("<h2 id=\"plots\">Plots</h2>" + "".join(figs))

    # outcomes
    orows = [[o, OUTCOME_SHORT.get(o, "no usable dump" if o not in CAPTURE_OK else ""), OUTCOMES[o],
              str(outcome_counts.get(o, 0)), f"{100 * outcome_counts.get(o, 0) / total:.1f}%" if total else "–"]
             for o in OUTCOMES]
    extra = [[o, "the run raised an exception", "see the error column of results.parquet", str(n), ""]
             for o, n in outcome_counts.items() if o not in OUTCOMES]
    parts.append("<h2 id=\"outcomes\">What each outcome means</h2>"
                 f"<p>A <em>capture failure</em> is any outcome but {' and '.join(CAPTURE_OK)}.</p>"
                 + _table(["outcome", "in short", "meaning", "runs", "share"], orows + extra, {3, 4}))

    # a fleet: one row per machine
    if machines:
        parts.append("<h2 id=\"machines\">Summary per machine</h2>"
                     "<p class=\"muted\">Each machine of the fleet over every other axis, 95% Wilson intervals "
                     "in brackets. The same table is in summary_by_machine.csv.</p>" + _dict_table(machines))

    # summary table
    if rows:
        parts.append("<h2 id=\"summary\">Summary per point</h2>"
                     "<p class=\"muted\">Shares of runs with 95% Wilson intervals in brackets; "
                     "changed pages are dumped pages that differ from RAM at the panic (median and maximum "
                     "over the point's runs); mean_dump_fidelity is the share of dumped pages unchanged, "
                     "over the runs that produced a dump. The same table is in summary.csv.</p>"
                     + _dict_table(rows))

    # assumptions
    arows = []
    for a in assumptions():
        arows.append([a.name, a.value, a.field or "–", field_values.get(a.field or "", "–"), a.note])
    parts.append("<h2 id=\"assumptions\">Assumptions the results rest on</h2>"
                 "<p>Defaults in <code>kdumpsim/defaults.py</code> marked “(assumption)”: no source gave the "
                 "value. Where a default fills a model field, the last columns say the field and the value this "
                 "experiment's model has there (if it differs from the default, the model or the experiment "
                 "set it).</p>"
                 + _table(["default", "value", "model field", "this model", "why / note"], arows))
    parts.append("<h2 id=\"simplifications\">Known simplifications of the model</h2><ul>"
                 + "".join(f"<li>{_e(s)}</li>" for s in SIMPLIFICATIONS) + "</ul>")
    parts.append("<p class=\"muted\">Files beside this page: results.parquet (one row per run), summary.csv, "
                 "manifest.json, the plots.</p></body></html>\n")
    return "\n".join(parts)


def field_values(cfg: Any, fields: list[str]) -> dict[str, str]:
    """The model's value of each dotted field (buses[] = every bus), as text."""
    out: dict[str, str] = {}
    for f in fields:
        obj: list[Any] = [cfg]
        for part in f.split("."):
            nxt: list[Any] = []
            for o in obj:
                if part.endswith("[]"):
                    nxt.extend(getattr(o, part[:-2], None) or [])
                else:
                    nxt.append(getattr(o, part, None))
            obj = nxt
        vals = sorted({_value_text(f, v) for v in obj if v is not None})
        if vals:
            out[f] = ", ".join(vals)
    return out


def _value_text(field: str, v: Any) -> str:
    from kdumpsim.units import fmt_duration
    name = field.rsplit(".", 1)[-1]
    if isinstance(v, int) and not isinstance(v, bool):
        if "size" in name:
            return f"{v / 2**20:g} MiB" if v >= 2**20 else f"{v} bytes"
        if "rate" in name or "bandwidth" in name or "throughput" in name:
            return f"{v / 1e6:g} MB/s"
        return fmt_duration(v, digits=6)
    if isinstance(v, float) and ("rate" in name or "bandwidth" in name or "throughput" in name):
        return f"{v / 1e6:g} MB/s"
    return str(v)


def write_report(exp: Any, out: Path, manifest: dict[str, Any], rows: list[dict[str, Any]], plots: list[Path],
                 outcome_counts: dict[str, int], machines: list[dict[str, Any]] | None = None) -> Path:
    """Write DIR/report.html (atomically); returns its path. `machines`: a
    fleet's summary per machine (runner.fleet_rows)."""
    cfg = exp.model_for(exp.points[0].index) if exp.points else None
    fields = sorted({a.field for a in assumptions() if a.field})
    values = field_values(cfg, fields) if cfg is not None else {}
    text = render(exp, manifest, rows, plots, outcome_counts, getattr(cfg, "name", ""), values, machines)
    path = Path(out) / "report.html"
    write_text(path, text)
    return path
