"""An experiment's results on disk: part files as runs finish, one merged
table, the manifest, and the summary statistics.

    DIR/parts/part-*.parquet   one per finished chunk, each written atomically
    DIR/results.parquet        all runs, sorted by (point, replicate)
    DIR/manifest.json          what ran: experiment file and sha256, versions, seed, times
    DIR/summary.csv            the per-point summary table

A run is done when its row is in a part file; `--resume` runs only the rest.
The merged table depends only on the rows: column types are inferred from the
values of all rows, columns come in a fixed order, so 1 worker, N workers and
Dask write the same bytes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from kdumpsim.atomic import atomic_write, write_text
from kdumpsim.errors import ConfigError

Z95 = 1.959963984540054          # the 97.5th percentile of the standard normal
FIXED_TYPES = {"point": pa.int64(), "replicate": pa.int64(), "seed": pa.uint64()}
IDENTITY_KEY = b"kdumpsim.identity"    # Parquet key-value metadata of every part: the run's identity
LOCK_NAME = ".kdumpsim.lock"
# What a fresh start may delete, and only in a directory whose manifest.json a sweep wrote.
OUTPUT_FILES = ("results.parquet", "summary.csv", "summary_by_machine.csv", "report.html")


# ---------------------------------------------------------------- tables
def infer_type(values: Iterable[Any]) -> pa.DataType:
    """One Arrow type for a column from its Python values (None = missing)."""
    present = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not present:
        return pa.null()
    if all(isinstance(v, bool) for v in present):
        return pa.bool_()
    if all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pa.uint64() if max(present) >= 2**63 else pa.int64()
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pa.float64()
    return pa.string()


def _convert(values: list[Any], typ: pa.DataType) -> list[Any]:
    if pa.types.is_string(typ):
        return [None if v is None else str(v) for v in values]
    if pa.types.is_floating(typ):
        return [None if v is None else float(v) for v in values]
    return values


def build_table(rows: list[dict[str, Any]], order: list[str] | None = None) -> pa.Table:
    """Rows (dicts, keys may differ) -> a table with the columns in `order`
    (default: first appearance; columns not in `order` follow by name); a
    missing value is null."""
    present: dict[str, None] = {}
    for r in rows:
        present.update(dict.fromkeys(r))
    if order is None:
        names = list(present)
    else:
        names = [c for c in order if c in present] + sorted(c for c in present if c not in set(order))
    arrays, fields = [], []
    for name in names:
        values = [r.get(name) for r in rows]
        typ = FIXED_TYPES.get(name) or infer_type(values)
        arrays.append(pa.array(_convert(values, typ), type=typ))
        fields.append(pa.field(name, typ))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def write_parquet(table: pa.Table, path: Path, metadata: dict[bytes, bytes] | None = None) -> None:
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    with atomic_write(path, "wb") as fh:
        pq.write_table(table, fh, compression="zstd")


# ---------------------------------------------------------------- the directory lock
@contextlib.contextmanager
def locked(out: Path) -> Iterator[None]:
    """Hold DIR/.kdumpsim.lock (flock) while a sweep writes DIR: a second sweep
    on the same directory is refused instead of mixing or deleting its rows.
    The kernel drops the lock when the process ends, however it ends."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            raise ConfigError(str(out), "", f"another kdumpsim sweep{f' (pid {holder})' if holder.isdigit() else ''}"
                              " is writing to this directory; wait for it to end or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


# ---------------------------------------------------------------- part files
class PartStore:
    """DIR/parts/*.parquet: what has been run so far. Each part carries the
    identity of the sweep that wrote it (experiment, models, code, seed)."""

    def __init__(self, out: Path, identity: str = ""):
        self.out = Path(out)
        self.parts = self.out / "parts"
        self.identity = identity

    def files(self) -> list[Path]:
        return sorted(self.parts.glob("part-*.parquet"))

    def _read(self, f: Path, columns: list[str] | None = None) -> pa.Table:
        """One part, checked: readable Parquet, with our columns and our identity."""
        try:
            meta = pq.read_schema(f).metadata or {}
            names = pq.read_schema(f).names
            missing = [c for c in ("point", "replicate", "seed") if c not in names]
            if missing:
                raise ConfigError(str(f), "", f"not a part file of a sweep (no column {missing[0]!r}); "
                                  "remove it, then run again with --resume")
            table = pq.read_table(f, columns=columns)
        except (pa.ArrowException, OSError) as e:
            raise ConfigError(str(f), "", f"damaged part file ({str(e).splitlines()[0][:200]}); remove it, then "
                              "run again with --resume (its runs are run again)") from None
        ident = meta.get(IDENTITY_KEY, b"").decode("ascii", "replace")
        if self.identity and ident != self.identity:
            raise ConfigError(str(f), "", "written by another sweep (other experiment, model, seed or kdumpsim "
                              f"code: identity {ident[:12] or 'none'} != {self.identity[:12]}); its rows would "
                              "not match: run without --resume to start afresh, or use another --out")
        return table

    def done(self, check: Callable[[int, int, int], str | None] | None = None) -> set[tuple[int, int]]:
        """(point, replicate) of every run saved; `check(point, replicate, seed)`
        says what is wrong with a row that does not belong to this sweep."""
        keys: set[tuple[int, int]] = set()
        for f in self.files():
            t = self._read(f, columns=["point", "replicate", "seed"])
            for point, rep, seed in zip(*(t.column(c).to_pylist() for c in ("point", "replicate", "seed"))):
                why = check(point, rep, seed) if check else None
                if why:
                    raise ConfigError(str(f), "", f"row (point {point}, replicate {rep}, seed {seed}) {why}: "
                                      "run without --resume to start afresh")
                keys.add((point, rep))
        return keys

    def write(self, rows: list[dict[str, Any]]) -> Path:
        """Save one chunk's rows; the file appears whole or not at all."""
        first = min((r["point"], r["replicate"]) for r in rows)
        path = self.parts / f"part-{first[0]:06d}-{first[1]:05d}-{uuid.uuid4().hex[:8]}.parquet"
        write_parquet(build_table(rows), path, {IDENTITY_KEY: self.identity.encode()})
        return path

    def rows(self) -> list[dict[str, Any]]:
        """Every saved row, once per (point, replicate), sorted by them."""
        by_key: dict[tuple[int, int], dict[str, Any]] = {}
        for f in self.files():
            for r in self._read(f).to_pylist():
                by_key.setdefault((r["point"], r["replicate"]), r)
        return [by_key[k] for k in sorted(by_key)]

    def clear(self) -> int:
        """Remove the parts of an earlier run (and half-written temporaries)."""
        n = 0
        for f in list(self.parts.glob("part-*.parquet")) + list(self.parts.glob(".part-*")):
            f.unlink()
            n += 1
        return n

    def clean_temporaries(self) -> None:
        # atomic_write leaves its temporary behind only if the process was killed
        for f in self.parts.glob(".part-*"):
            with contextlib.suppress(FileNotFoundError):
                f.unlink()


def column_order(rows: list[dict[str, Any]], first: list[str], fixed: list[str], prefixes: list[str],
                 last: list[str]) -> list[str]:
    """A canonical column order that depends on the set of columns only (not on
    which rows were written together): `first`, the `fixed` metric columns,
    each prefix group (phase times by when the phase is first reached), the
    rest by name, then `last`."""
    present: dict[str, None] = {}
    for r in rows:
        present.update(dict.fromkeys(r))
    order = [c for c in dict.fromkeys(first + fixed) if c in present]
    for prefix in prefixes:
        group = [c for c in present if c.startswith(prefix) and c not in order and c not in last]
        if prefix == "t_":
            group.sort(key=lambda c: (min((r[c] for r in rows if r.get(c) is not None), default=math.inf), c))
        else:
            group.sort()
        order += group
    order += sorted(c for c in present if c not in order and c not in last)
    return order + [c for c in last if c in present]


def merge(store: PartStore, path: Path, first: list[str], fixed: list[str], prefixes: list[str],
          last: list[str]) -> pa.Table:
    """All part files -> one table sorted by (point, replicate), written atomically."""
    rows = store.rows()
    table = build_table(rows, column_order(rows, first, fixed, prefixes, last))
    write_parquet(table, path)
    return table


# ---------------------------------------------------------------- statistics
def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (95% by default); (nan, nan) for n = 0."""
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True)
class Share:
    k: int
    n: int

    @property
    def p(self) -> float:
        return self.k / self.n if self.n else math.nan

    @property
    def ci(self) -> tuple[float, float]:
        return wilson(self.k, self.n)

    def text(self) -> str:
        lo, hi = self.ci
        return f"{100 * self.p:3.0f}% [{100 * lo:2.0f}-{100 * hi:3.0f}]"


def summarize(df: Any, points: Sequence[Any], outcomes: list[str], capture_ok: tuple[str, ...]) -> list[dict[str, Any]]:
    """One row per sweep point: runs, outcome shares with Wilson intervals,
    capture-failure share, median corrupted bytes, mean dump fidelity."""
    out = []
    groups = {k: g for k, g in df.groupby("point", sort=True)}
    for p in points:
        g = groups.get(p.index)
        n = 0 if g is None else len(g)
        row: dict[str, Any] = {"point": p.index, **p.display, "runs": n}
        counts = {} if g is None else g["outcome"].value_counts().to_dict()
        fail = sum(v for o, v in counts.items() if o not in capture_ok)
        row["capture_failure"] = Share(int(fail), n)
        for o in outcomes:
            row[o] = Share(int(counts.get(o, 0)), n)
        median = math.nan if g is None else float(g["corrupted_bytes"].median())
        row["median_corrupted_bytes"] = round(median) if not math.isnan(median) else median
        fid = None if g is None else g["dump_fidelity"].dropna()
        row["mean_dump_fidelity"] = math.nan if fid is None or fid.empty else float(fid.mean())
        # The damage in units a reader can weigh: dumped pages that differ from RAM at the panic.
        pages = None if g is None or "dump_pages_corrupted" not in g else g["dump_pages_corrupted"].dropna()
        row["median_changed_pages"] = math.nan if pages is None or pages.empty else float(pages.median())
        row["max_changed_pages"] = math.nan if pages is None or pages.empty else float(pages.max())
        out.append(row)
    return out


def marginal(df: Any, axis_name: str, labels: dict[int, str], order: list[str],
             capture_ok: tuple[str, ...]) -> list[tuple[str, Share]]:
    """Capture-failure share per value of one axis, over all other axes."""
    by_value = df["point"].map(labels)
    failed = ~df["outcome"].isin(list(capture_ok))
    out = []
    for value in order:
        mask = by_value == value
        out.append((value, Share(int(failed[mask].sum()), int(mask.sum()))))
    return out


def format_table(rows: list[dict[str, Any]]) -> str:
    """Plain-text table: Shares as 'p% [lo-hi]', numbers compact."""
    if not rows:
        return "(no runs)"
    cols = list(rows[0])
    digits = {c: _digits([r[c] for r in rows]) for c in cols}
    cells = [[_cell(r[c], digits[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.rjust(w) if _numeric(v) else v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def _numeric(text: str) -> bool:
    return text[:1].isdigit() or text[:1] in "-. " or text == "nan"


def _cell(v: Any, digits: int = 4) -> str:
    if isinstance(v, Share):
        return v.text()
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        if v == int(v) and abs(v) < 1e15 and (abs(v) >= 10 or digits <= 1):
            return f"{v:.0f}"
        if digits <= 1:
            return f"{v:.1f}"
        return f"{v:.{digits}f}" if abs(v) < 10 else f"{v:.0f}"
    return str(v)


def _digits(values: list[Any], least: int = 4, most: int = 9) -> int:
    """Decimals for a column of fractions that tell its values apart: no value
    below 1 printed as 1.0000 (a fidelity of 0.99997 is not 1), no two
    different values printed the same. Whole-number columns get 0."""
    xs = [v for v in values if isinstance(v, float) and not math.isnan(v)]
    if not xs:
        return least
    if all(v == int(v) for v in xs):
        return 0
    if all(2 * v == int(2 * v) for v in xs):
        return 1                     # medians of counts: 12.5
    small = [v for v in xs if abs(v) < 10]
    for d in range(least, most + 1):
        shown = {f"{v:.{d}f}" for v in small}
        if len(shown) == len(set(small)) and not any(v != round(v) and f"{v:.{d}f}" == f"{round(v):.{d}f}"
                                                     for v in small):
            return d
    return most


def summary_csv_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The summary with each share as three columns (share, ci_low, ci_high)."""
    out = []
    for r in rows:
        flat: dict[str, Any] = {}
        for k, v in r.items():
            if isinstance(v, Share):
                lo, hi = v.ci
                flat.update({k: v.p, f"{k}_ci_low": lo, f"{k}_ci_high": hi})
            else:
                flat[k] = v
        out.append(flat)
    return out


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    import csv
    import io
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    write_text(path, buf.getvalue())


# ---------------------------------------------------------------- manifest
def read_manifest(out: Path) -> dict[str, Any] | None:
    """DIR/manifest.json if a sweep wrote it (a mapping with the experiment's
    sha256), else None: missing, damaged, binary or someone else's file."""
    p = Path(out) / "manifest.json"
    try:
        data = json.loads(p.read_bytes()[:16 << 20].decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("experiment_sha256"), str):
        return None
    return data


def write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    write_text(Path(out) / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def versions() -> dict[str, str]:
    """Versions of what produced the numbers."""
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for pkg in ("kdumpsim", "simpy", "numpy", "pandas", "pyarrow", "dask", "distributed", "pydantic", "matplotlib"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    import platform
    out["python"] = platform.python_version()
    return out


def code_sha256() -> str:
    """A digest of the simulator's code (every module but the CLI and the lab):
    a resume after the code changed would mix two simulators' rows."""
    import kdumpsim
    pkg = Path(kdumpsim.__file__).parent
    h = hashlib.sha256(kdumpsim.__version__.encode())
    for f in sorted(pkg.rglob("*.py")):
        rel = f.relative_to(pkg).as_posix()
        if rel.startswith(("cli/", "lab/")):
            continue
        h.update(rel.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def rate_table(df: Any, by: str | list[str], capture_ok: tuple[str, ...] = ("ok", "ok_dump_corrupted")) -> Any:
    """Capture-failure rate per group of `df` with its 95% Wilson interval
    (columns: the group keys, runs, failures, rate, lo, hi)."""
    import pandas as pd
    keys = [by] if isinstance(by, str) else list(by)
    rows = []
    for key, g in df.groupby(keys, sort=False):
        n, k = len(g), int((~g["outcome"].isin(capture_ok)).sum())
        lo, hi = wilson(k, n)
        rows.append({**dict(zip(keys, key)), "runs": n, "failures": k, "rate": k / n,
                     "lo": min(lo, k / n), "hi": max(hi, k / n)})   # guard float rounding at 0% and 100%
    return pd.DataFrame(rows)
