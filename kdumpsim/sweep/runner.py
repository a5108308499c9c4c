"""The sweep as a library: run every point of an experiment, save rows as
they come, summarise and plot. The CLI (`kdumpsim experiment`) and the
notebooks call `run_experiment`.

    from kdumpsim import run_experiment
    res = run_experiment("experiments/dma_sweep.yaml", "results/dma_sweep", workers=2)
    res.table            # pandas DataFrame, one row per run
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from collections.abc import Iterable
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdumpsim.errors import ConfigError, SweepStopped, WorkerLost, printable
from kdumpsim.measure.record import RECORD_COLUMNS, RECORD_PREFIXES
from kdumpsim.names import CAPTURE_OK, OUTCOMES
from kdumpsim.paths import ROOT
from kdumpsim.sweep.design import (
    ID_COLUMNS,
    TAIL_COLUMNS,
    Experiment,
    check_layouts,
    kept,
    load_experiment,
    models_sha256,
    point_count_text,
    run_seed,
)
from kdumpsim.sweep.executors import (
    Chunk,
    Executor,
    ExecutorLost,
    RunResult,
    chunk_size,
    default_workers,
    make_chunks,
    make_executor,
    run_chunk,
)
from kdumpsim.sweep.plots import draw_plots
from kdumpsim.sweep.report_html import code_version, write_report
from kdumpsim.sweep.results import (
    OUTPUT_FILES,
    PartStore,
    Share,
    code_sha256,
    format_table,
    locked,
    marginal,
    merge,
    read_manifest,
    summarize,
    summary_csv_rows,
    versions,
    write_csv,
    write_manifest,
)

if TYPE_CHECKING:
    import pandas as pd

ERROR = "error"       # outcome of a run that raised instead of finishing
MAX_WORKERS = 256     # worker processes (README "Errors and recovery")

@dataclass(frozen=True)
class Options:
    workers: int
    resume: bool = False
    executor: str = "local"          # local | dask
    scheduler: str | None = None     # Dask scheduler address or file
    chunk_size: int | None = None
    progress: bool = True


@dataclass
class SweepResult:
    experiment: Experiment
    out: Path
    table: pd.DataFrame              # one row per run (results.parquet)
    manifest: dict[str, Any]


def run_experiment(experiment: str | Path | Experiment, out: str | Path | None = None, *, workers: int | None = None,
                   resume: bool = False, executor: str = "local", scheduler: str | None = None,
                   chunk_size: int | None = None, progress: bool = True) -> SweepResult:
    """Run an experiment file (or a loaded Experiment) into `out` (default
    results/<name>) and return its table. Raises ConfigError on bad input."""
    if scheduler and executor != "dask":
        raise ConfigError("--scheduler", "", "needs --executor dask")
    for name, value in (("--workers", workers), ("--chunk-size", chunk_size)):
        if value is not None and value < 1:
            raise ConfigError(name, "", "must be at least 1")
    if workers is not None and workers > MAX_WORKERS:
        raise ConfigError("--workers", "", f"{workers} is more than {MAX_WORKERS}; this machine has "
                          f"{default_workers()} CPUs for them")
    exp = prepare(experiment)
    dest = Path(out) if out is not None else default_out(exp)
    check_vmcore_space(exp, dest)
    opts = Options(workers or default_workers(), resume, executor, scheduler, chunk_size, progress)
    return _run(exp, dest, opts)


def prepare(experiment: str | Path | Experiment) -> Experiment:
    """Load an experiment and lay out every point (an impossible one fails here, before any run)."""
    exp = experiment if isinstance(experiment, Experiment) else load_experiment(experiment)
    check_layouts(exp)
    print(f"{exp.spec.name}: {point_count_text(exp)}", file=sys.stderr)
    return exp


def default_out(exp: Experiment) -> Path:
    return Path("results") / exp.spec.name


def check_vmcore_space(exp: Experiment, out: Path) -> None:
    """vmcores are as big as the model's RAM: say how much, refuse if the disk is too small."""
    import shutil

    if exp.spec.analyse:
        biggest = max(sum(r.end - r.start + 1 for r in exp.model_for(p.index).memory.iomem if r.type == "System RAM")
                      for p in exp.points)
        print(f"analyse: one vmcore of up to {biggest / 2**30:.1f} GiB at a time per worker in {out / 'scratch'}",
              file=sys.stderr)
    if exp.spec.vmcores == "none":
        return
    need = sum(sum(r.end - r.start + 1 for r in exp.model_for(p.index).memory.iomem if r.type == "System RAM")
               for p in exp.points)
    where = out if out.exists() else next(d for d in [out, *out.parents] if d.exists())
    free = shutil.disk_usage(where).free
    print(f"vmcores: first run of each point, about {need / 2**30:.1f} GiB in {out / 'vmcores'}", file=sys.stderr)
    if need > free:
        raise ConfigError(exp.source, "vmcores", f"'first' would write about {need / 2**30:.1f} GiB of vmcores "
                          f"({len(exp.points)} points) but {where} has {free / 2**30:.1f} GiB free: "
                          "use a model with less RAM, or vmcores: none")


def identity(exp: Experiment) -> dict[str, str]:
    """What defines the runs of a sweep: the experiment file, every point's
    resolved model, the simulator's code and the master seed; `identity` is
    their digest, stamped on every part file and in the manifest."""
    parts = {"experiment_sha256": exp.sha256, "models_sha256": models_sha256(exp), "code_sha256": code_sha256()}
    whole = json.dumps({**parts, "master_seed": exp.spec.seed}, sort_keys=True)
    return {**parts, "identity": hashlib.sha256(whole.encode()).hexdigest()}


def _run(exp: Experiment, out: Path, opts: Options) -> SweepResult:
    with locked(out):
        return _run_locked(exp, out, opts)


def _run_locked(exp: Experiment, out: Path, opts: Options) -> SweepResult:
    ident = identity(exp)
    store = PartStore(out, ident["identity"])
    started = _prepare(exp, out, store, opts.resume, ident)
    done = store.done(_row_check(exp))
    todo = [r for r in exp.iter_runs() if (r.point, r.replicate) not in done]
    total = len(exp.points) * exp.spec.replicates
    if done:
        print(f"resuming: {len(done)} of {total} runs already in {store.parts}", file=sys.stderr)
    manifest = _manifest(exp, out, opts, started, status="running", runs=len(done), **ident)
    _write_manifest(out, manifest)
    vmcore_dir = str((out / "vmcores").resolve()) if exp.spec.vmcores == "first" else None
    t0 = time.monotonic()
    if todo:
        analyse_dir = str((out / "scratch").resolve()) if exp.spec.analyse else None
        try:
            executor = make_executor(opts.executor, opts.workers, opts.scheduler)
        except ConfigError as e:
            raise ConfigError(e.source, e.field, f"{e.message} ({_saved_text(exp, store, len(done), total)})") \
                from None
        with executor as ex:
            # chunks for the workers there are (a Dask cluster's own count, not this machine's cores)
            size = opts.chunk_size or chunk_size(len(todo), ex.workers)
            chunks = make_chunks(todo, exp.model_for, size, exp.spec.seed, vmcore_dir, analyse_dir)
            manifest["executor"] = _executor_text(ex)
            _run_chunks(exp, store, ex, chunks, total, len(done), opts.progress)
    return _finish(exp, out, store, manifest, len(todo), time.monotonic() - t0)


def _row_check(exp: Experiment):
    """What is wrong with a saved row for this experiment (None: it belongs)."""
    def check(point: int, replicate: int, seed: int) -> str | None:
        if not (isinstance(point, int) and 0 <= point < len(exp.points)):
            return f"names a point this experiment does not have (it has {len(exp.points)})"
        if not (isinstance(replicate, int) and 0 <= replicate < exp.spec.replicates):
            return f"names a replicate this experiment does not have (it has {exp.spec.replicates})"
        want = run_seed(exp.spec.seed, exp.points[point], replicate)
        if seed != want:
            return f"has another seed than this experiment gives that run ({want})"
        return None
    return check


def _prepare(exp: Experiment, out: Path, store: PartStore, resume: bool, ident: dict[str, str]) -> str:
    """Check a --resume continues the same experiment; else start afresh
    (deleting only what an earlier sweep wrote). Returns the start time to
    record (the first session's when resuming)."""
    now = _now()
    previous = read_manifest(out)
    for stale in (out / "vmcores").glob(".point-*.part"):   # a temporary of a killed sweep (no O_TMPFILE)
        stale.unlink(missing_ok=True)
    if resume:
        store.clean_temporaries()
        if previous and store.files():
            models = "the model" if len(exp.models) == 1 else "a model of the fleet"
            for key, what in (("experiment_sha256", "the experiment file"), ("models_sha256", models),
                              ("code_sha256", "kdumpsim's code")):
                before = previous.get(key)
                if isinstance(before, str) and before != ident[key]:
                    raise ConfigError(exp.source, "", f"{what} changed since the run in {out} started ({key} "
                                      f"{before[:12]}... != {ident[key][:12]}...): its saved runs would not "
                                      "match; run without --resume to start afresh")
        return str(previous.get("started", now)) if previous else now
    ours = [out / f for f in OUTPUT_FILES if (out / f).exists()] + store.files() + \
        sorted((out / "vmcores").glob("point-*.vmcore"))
    if ours and previous is None:
        raise ConfigError(str(out), "", f"holds {ours[0].name} but no manifest.json of a kdumpsim sweep: kdumpsim "
                          "deletes only what it wrote; choose another --out (or remove the old results)")
    removed = store.clear() if store.parts.exists() else 0
    for stale in [out / f for f in OUTPUT_FILES] + sorted((out / "vmcores").glob("point-*.vmcore")):
        stale.unlink(missing_ok=True)
    if removed:
        print(f"starting afresh: removed {removed} part files of an earlier run in {store.parts} "
              "(--resume continues one instead)", file=sys.stderr)
    return now


def _run_chunks(exp: Experiment, store: PartStore, ex: Executor, chunks: Iterable[Chunk], total: int, done: int,
                progress: bool) -> None:
    """Run the chunks, saving each chunk's rows as it arrives (also the rows
    before a run that ends the sweep)."""
    bar = progress_bar(exp.spec.name, total, done, progress)
    saved = done
    try:
        for results in ex.map_unordered(run_chunk, chunks):
            rows = [_row(exp, r) for r in results if r.error is None and r.stopped is None]
            if rows:
                store.write(rows)
                saved += len(rows)
                bar.update(len(rows))
            for r in results:
                _raise_for(exp, r, _saved_text(exp, store, saved, total))
    except KeyboardInterrupt:
        bar.close()
        print(f"\ninterrupted: {_saved_text(exp, store, saved, total)}", file=sys.stderr)
        raise
    except BrokenProcessPool as e:
        # A worker was killed (OOM killer, kill -9): what finished is saved.
        bar.close()
        raise WorkerLost(f"a worker process died ({e}); {_saved_text(exp, store, saved, total)}") from None
    except ExecutorLost as e:
        # Dask: the scheduler gave a worker up (KilledWorker) or went away.
        bar.close()
        raise WorkerLost(f"{e}; {_saved_text(exp, store, saved, total)}") from None
    finally:
        bar.close()


def _saved_text(exp: Experiment, store: PartStore, saved: int, total: int) -> str:
    """The line every stopped sweep ends with."""
    return (f"{saved} of {total} runs are saved in {store.parts}; continue with: "
            f"kdumpsim experiment {exp.source} --out {store.out} --resume")


def _raise_for(exp: Experiment, result: RunResult, saved: str) -> None:
    """A run that cannot be a row ends the sweep, naming the run."""
    p = exp.points[result.point]
    at = f"point {p.index} ({p.label}) replicate {result.replicate} seed {result.seed}"
    if result.error is not None:
        field_, message = result.error
        raise ConfigError(exp.source, f"{at}: {field_}", f"{message} ({saved})")
    if result.stopped is not None:
        raise SweepStopped(f"{result.stopped} (writing the vmcore of {at}); {saved}")


class LogProgress:
    """Progress for a log (stderr not a terminal): one line each `step` of the
    runs, instead of tqdm's carriage-return redraws that pile up on one line."""

    def __init__(self, name: str, total: int, initial: int = 0, step: float = 0.1, file: Any = None):
        self.name, self.total, self.n = name, total, initial
        self.file = file if file is not None else sys.stderr
        self.every = max(1, math.ceil(total * step))
        self.next = (initial // self.every + 1) * self.every
        self.t0 = time.monotonic()
        self.start = initial
        self.closed = False

    def update(self, k: int) -> None:
        self.n += k
        if self.n >= self.next or self.n >= self.total:
            self.next = (self.n // self.every + 1) * self.every
            self._line()

    def _line(self) -> None:
        spent = time.monotonic() - self.t0
        done = self.n - self.start
        left = (self.total - self.n) * spent / done if done else math.nan
        eta = f", about {_duration_text(left)} left" if done and self.n < self.total else ""
        print(f"{self.name}: {self.n}/{self.total} runs ({100 * self.n / max(1, self.total):.0f}%), "
              f"{_duration_text(spent)} elapsed{eta}", file=self.file, flush=True)

    def close(self) -> None:
        self.closed = True


def _duration_text(sec: float) -> str:
    if math.isnan(sec):
        return "?"
    return f"{sec:.0f} s" if sec < 120 else f"{sec / 60:.1f} min"


def progress_bar(name: str, total: int, initial: int, enabled: bool, file: Any = None) -> Any:
    """tqdm on a terminal; one line per 10% of the runs when stderr is a file or a pipe (a log)."""
    out = file if file is not None else sys.stderr
    if enabled and not _is_tty(out):
        return LogProgress(name, total, initial, file=out)
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, unit="run", desc=name, file=out, disable=not enabled,
                dynamic_ncols=True, mininterval=0.5, smoothing=0.05)


def _is_tty(fh: Any) -> bool:
    try:
        return bool(fh.isatty())
    except (AttributeError, ValueError):
        return False


def _row(exp: Experiment, result: RunResult) -> dict[str, Any]:
    """One results row: identity, axis values, the kept metrics, how to re-run it."""
    p = exp.points[result.point]
    row: dict[str, Any] = {"point": p.index, "point_label": p.label, "replicate": result.replicate,
                           "seed": result.seed, **p.params}
    if result.crash is not None:
        # The row alone must say which run it was (the table may be read without its columns).
        row.update(outcome=ERROR, error=f"point {p.index} ({p.label}) replicate {result.replicate} "
                                        f"seed {result.seed}: {result.crash}")
    else:
        assert result.record is not None
        row.update({k: v for k, v in result.record.items() if kept(exp.spec, k)})
    row["overrides"] = json.dumps(p.overrides, separators=(",", ":"))
    row["rerun"] = exp.rerun_command(p, result.seed)
    return row


def _finish(exp: Experiment, out: Path, store: PartStore, manifest: dict, ran: int, seconds: float) -> SweepResult:
    """Merge the parts, print the summary, draw the plots, complete the manifest."""
    first = list(ID_COLUMNS) + [a.name for a in exp.axes] + ["outcome"]
    table = merge(store, out / "results.parquet", first, list(RECORD_COLUMNS), list(RECORD_PREFIXES),
                  list(TAIL_COLUMNS))
    df = table.to_pandas()
    measured = df[df["outcome"] != ERROR]
    if len(measured) < len(df):
        first = df[df["outcome"] == ERROR].iloc[0]
        print(f"{len(df) - len(measured)} runs raised an exception: their rows have outcome '{ERROR}' and the "
              "exception in the error column; they are left out of the summary and the plots. The first: "
              f"{printable(str(first['error']))}; re-run it alone with: {first['rerun']}", file=sys.stderr)
    rows = print_summary(exp, measured, out)
    machines = fleet_rows(exp, measured)
    plots = draw_plots(exp, measured, out)
    manifest.update(status="complete", finished=_now(), runs=table.num_rows, runs_this_session=ran,
                    seconds_this_session=round(seconds, 1), columns=table.column_names,
                    plots=[p.name for p in plots], code_version=code_version(), report="report.html")
    _write_manifest(out, manifest)
    counts = {str(k): int(v) for k, v in df["outcome"].value_counts().items()}
    report = write_report(exp, out, manifest, rows, plots, counts, machines)
    print(f"\n{table.num_rows} runs -> {out / 'results.parquet'}; plots: "
          f"{', '.join(p.name for p in plots) or 'none'}; report: {report}", file=sys.stderr)
    return SweepResult(exp, out, df, manifest)


def print_summary(exp: Experiment, df: Any, out: Path) -> list[dict[str, Any]]:
    seen = [o for o in OUTCOMES if (df["outcome"] == o).any()]
    rows = summarize(df, exp.points, seen, CAPTURE_OK)
    write_csv(summary_csv_rows(rows), out / "summary.csv")
    print(f"\n{exp.spec.name}: outcome shares per point, 95% Wilson intervals in brackets; "
          f"capture_failure = any outcome but {' / '.join(CAPTURE_OK)}")
    print(format_table(rows))
    for axis in exp.axes:
        labels = {p.index: p.display[axis.name] for p in exp.points}
        shares = marginal(df, axis.name, labels, list(dict.fromkeys(axis.display)), CAPTURE_OK)
        text = ", ".join(f"{v} {s.text()}" for v, s in shares)
        print(f"capture_failure by {axis.name}: {text}")
    machines = fleet_rows(exp, df)
    if machines:
        write_csv(summary_csv_rows(machines), out / "summary_by_machine.csv")
        print(f"\n{exp.spec.name}: per machine (over every other axis; also summary_by_machine.csv)")
        print(format_table(machines))
    return rows


def fleet_rows(exp: Experiment, df: Any) -> list[dict[str, Any]]:
    """A fleet's summary per machine, over every other axis: its model file,
    runs, capture-failure share and the share of each outcome seen."""
    fleet = next((a for a in exp.axes if a.source == "models"), None)
    if fleet is None:
        return []
    seen = [o for o in OUTCOMES if (df["outcome"] == o).any()]
    out = []
    for value, model in zip(fleet.display, exp.models):
        these = df[df[fleet.name] == value]
        failed = int((~these["outcome"].isin(list(CAPTURE_OK))).sum())
        row: dict[str, Any] = {fleet.name: value, "model": model.ref, "runs": len(these),
                               "capture_failure": Share(failed, len(these))}
        row.update({o: Share(int((these["outcome"] == o).sum()), len(these)) for o in seen})
        out.append(row)
    return out


def _manifest(exp: Experiment, out: Path, opts: Options, started: str, **extra: Any) -> dict:
    return {
        "experiment": str(exp.path),
        "experiment_sha256": exp.sha256,
        "name": exp.spec.name,
        "model": exp.model_ref,
        "models": [m.ref for m in exp.models],
        "master_seed": exp.spec.seed,
        "replicates": exp.spec.replicates,
        "points": len(exp.points),
        "runs_total": len(exp.points) * exp.spec.replicates,
        "axes": [{"name": a.name, "keys": list(a.keys), "unit": a.unit, "values": list(a.display)} for a in exp.axes],
        "versions": versions(),
        "started": started,
        "resumed": opts.resume,
        "executor": opts.executor,
        "workers": opts.workers,
        "rerun_from": str(exp.root),
        "out": str(out),
        **extra,
    }


def _write_manifest(out: Path, manifest: dict) -> None:
    write_manifest(out, manifest)


def _executor_text(ex: Executor) -> str:
    if ex.name == "dask":
        return f"dask {ex.scheduler} ({ex.workers} workers)"
    return f"local ({ex.workers} worker{'s' if ex.workers != 1 else ''})"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def results_of(experiment: str | Path, out: str | Path, **kwargs: Any) -> pd.DataFrame:
    """The results table of `experiment` in `out`, running it first if `out`
    has none (paths relative to the project checkout, as notebooks use them)."""
    import pandas as pd
    dest = ROOT / out
    if not (dest / "results.parquet").exists():
        run_experiment(ROOT / experiment, dest, progress=False, **kwargs)
    return pd.read_parquet(dest / "results.parquet")
