"""What a reader sees of an experiment: report.html (in a real headless
Chromium), the plots' size and labels, the summary's digits, progress in a log."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from conftest import require_tool

from kdumpsim.sweep.design import load_experiment
from kdumpsim.sweep.plots import PAGE_WIDTH, figure, metric_stats, with_axis_labels
from kdumpsim.sweep.report_html import assumptions
from kdumpsim.sweep.results import format_table
from kdumpsim.sweep.runner import LogProgress, progress_bar, run_experiment

ROOT = Path(__file__).resolve().parents[1]
SMALL = ROOT / "tests" / "experiments" / "small_i386.yaml"


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    run_experiment(SMALL, out, workers=1, progress=False)
    return out


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.tables = 0
        self.ids: list[str] = []
        self.body_attrs: dict[str, str | None] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "img":
            self.images.append(a.get("src") or "")
        elif tag == "table":
            self.tables += 1
        elif tag == "body":
            self.body_attrs = a
        if a.get("id"):
            self.ids.append(a["id"] or "")


def test_every_run_writes_a_report_with_table_plots_outcomes_manifest_assumptions(small: Path) -> None:
    text = (small / "report.html").read_text()
    page = _Page()
    page.feed(text)
    assert {"manifest", "plots", "outcomes", "summary", "assumptions", "simplifications"} <= set(page.ids)
    assert page.tables >= 4
    pngs = sorted(p.name for p in small.glob("*.png"))
    assert sorted(page.images) == pngs and len(pngs) == 3            # linked relative, beside the page
    for outcome in ("ok_dump_corrupted", "purgatory_mismatch", "capture_kernel_corrupted"):
        assert outcome in text
    assert "models/paper-i386-2005.yaml" in text and "master seed" in text and ">7<" in text
    assert "kdumpsim 0." in text                                     # the code version
    assert "CAPTURE_BOOT" in text and "timing.capture_boot" in text  # an (assumption) default and its field
    assert "Known simplifications" in text
    assert "http://" not in text and "https://" not in text and "<script" not in text   # nothing fetched


def test_assumptions_come_from_the_defaults_file() -> None:
    found = {a.name: a for a in assumptions()}
    assert {"CAPTURE_BOOT", "CAPTURE_DRIVER_INIT", "DUMP_START_DELAY", "LAPIC_SHUTDOWN"} <= set(found)
    assert found["CAPTURE_DRIVER_INIT"].field == "timing.driver_init"
    assert "NMI_SHOOTDOWN_TIMEOUT" not in found and "E1000_RX_DESCRIPTORS" not in found   # sourced values


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return name
    return require_tool("chromium")


def _chromium_run(url: str, *args: str) -> subprocess.CompletedProcess:
    profile = tempfile.mkdtemp(prefix="kdumpsim-chromium-")
    try:
        return subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                               "--disable-background-networking", "--disable-component-update", "--disable-sync",
                               "--no-first-run", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
                               *args, url], capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def test_report_loads_in_headless_chromium_with_every_image(small: Path, tmp_path: Path) -> None:
    # A copy of the page, beside its images, with a script that counts the images the browser decoded.
    check = small / "report-check.html"
    probe = ("<script>window.addEventListener('load', () => { const imgs = [...document.images];"
             "document.body.setAttribute('data-images', imgs.length);"
             "document.body.setAttribute('data-broken', imgs.filter(i => !i.complete || i.naturalWidth === 0)"
             ".map(i => i.getAttribute('src')).join(' ') || 'none');"
             "document.body.setAttribute('data-rows', document.querySelectorAll('#summary ~ div table tbody tr')"
             ".length); });</script></body>")
    check.write_text((small / "report.html").read_text().replace("</body>", probe))
    try:
        r = _chromium_run(check.resolve().as_uri(), "--virtual-time-budget=5000", "--dump-dom")
    finally:
        check.unlink()
    assert r.returncode == 0, r.stderr[-2000:]
    page = _Page()
    page.feed(r.stdout)
    assert page.body_attrs.get("data-images") == "3", r.stdout[:500]
    assert page.body_attrs.get("data-broken") == "none"
    assert int(page.body_attrs.get("data-rows") or 0) >= 12          # one summary row per point
    shot = tmp_path / "report.png"
    r = _chromium_run((small / "report.html").resolve().as_uri(), "--window-size=1200,1600",
                      f"--screenshot={shot}")
    assert r.returncode == 0 and shot.stat().st_size > 20_000


# ---------------------------------------------------------------- plots
def test_plots_fit_a_page_and_say_what_they_show(small: Path) -> None:
    import matplotlib.image
    exp = load_experiment(SMALL)
    df = with_axis_labels(exp, pd.read_parquet(small / "results.parquet"))
    for spec in exp.spec.plots:
        fig = figure(exp, df, spec)
        w, _ = fig.get_size_inches()
        assert w <= PAGE_WIDTH + 0.01
        title = fig._suptitle.get_text()
        assert "_" not in title.split("\n")[0], title                # words, not column names
        for ax in fig.axes:
            for label in ax.get_yticklabels():
                assert "e-" not in label.get_text() and "+" not in label.get_text()   # no offset notation
    for png in small.glob("*.png"):
        img = matplotlib.image.imread(png)
        assert img.shape[1] <= 1100, (png.name, img.shape)             # ~6.5-7 in at 150 dpi


def test_heatmap_cells_say_share_runs_and_interval(small: Path) -> None:
    exp = load_experiment(SMALL)
    df = with_axis_labels(exp, pd.read_parquet(small / "results.parquet"))
    spec = next(s for s in exp.spec.plots if s.kind == "heatmap")
    texts = [t.get_text() for ax in figure(exp, df, spec).axes for t in ax.texts]
    cells = [t for t in texts if re.fullmatch(r"\d+%\n\d+/\d+\n\[\d+-\d+\]", t)]
    assert len(cells) == 6, texts                                     # 2 windows x 3 starts


def test_fidelity_is_plotted_as_changed_pages_per_million() -> None:
    g = pd.DataFrame({"dump_fidelity": [1.0, 0.9997, None], "outcome": ["ok"] * 3})
    s = metric_stats(g, "dump_fidelity")
    assert s["n"] == 2 and s["value"] == pytest.approx(150) and s["lo"] >= 0


# ---------------------------------------------------------------- summary and progress
def test_summary_prints_fidelity_with_the_digits_that_tell_points_apart() -> None:
    rows = [{"point": 0, "mean_dump_fidelity": 1.0, "median_changed_pages": 0.0},
            {"point": 1, "mean_dump_fidelity": 0.99997, "median_changed_pages": 12.5},
            {"point": 2, "mean_dump_fidelity": 0.999972, "median_changed_pages": 120.0}]
    lines = format_table(rows).splitlines()
    assert "0.999970" in lines[2] and "0.999972" in lines[3] and "1.0000" not in lines[2]
    assert lines[1].split()[-1] == "0" and "12.5" in lines[2]


def test_progress_in_a_log_is_one_line_per_tenth() -> None:
    buf = io.StringIO()            # not a terminal
    bar = progress_bar("sweep", 200, 0, True, file=buf)
    assert isinstance(bar, LogProgress)
    for _ in range(200):
        bar.update(1)
    bar.close()
    lines = buf.getvalue().splitlines()
    assert len(lines) == 10 and "\r" not in buf.getvalue()
    assert lines[0].startswith("sweep: 20/200 runs (10%)") and lines[-1].startswith("sweep: 200/200 runs (100%)")
    quiet = io.StringIO()
    progress_bar("sweep", 10, 0, False, file=quiet).update(10)
    assert quiet.getvalue() == ""
