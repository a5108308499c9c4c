"""Inputs that hung or raised a traceback (issue 17 items 16, 21, 22): one line, exit 2."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from kdumpsim.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
GOOD = {"time_ns": 0, "time": 0.0, "actor": "nic0", "kind": "dma_write", "addr": 4096, "bytes": 64}


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], fragment: str) -> None:
    done: list[int] = []
    t = threading.Thread(target=lambda: done.append(main(argv)), daemon=True)
    t.start()
    t.join(30)
    assert done, f"{argv} hangs"
    err = capsys.readouterr().err
    assert done == [2] and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert fragment in err, err


@pytest.mark.parametrize("cmd", ["validate", "run", "experiment", "timeline"])
def test_a_fifo_does_not_block(tmp_path: Path, capsys: pytest.CaptureFixture[str], cmd: str) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    extra = ["--perfetto", str(tmp_path / "o.json")] if cmd == "timeline" else []
    one_line_error(capsys, [cmd, str(fifo), *extra], "not a regular file")


def test_timeline_of_dev_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one_line_error(capsys, ["timeline", "/dev/zero", "--perfetto", str(tmp_path / "o.json")], "not a regular file")


@pytest.mark.parametrize(("line", "fragment"), [
    (json.dumps({**GOOD, "bytes": "x"}), "bytes must be an integer"),
    (json.dumps({**GOOD, "bytes": None}), "bytes must be an integer"),
    (json.dumps(GOOD)[:-1] + ', "bytes": 1e999}', "bytes must be an integer"),
    (json.dumps({**GOOD, "x": 1})[:-1] + ', "y": 1e999}', "must be a finite number"),
    ('{"a":' * 100000 + "1" + "}" * 100000, "nested too deeply"),
    (json.dumps(GOOD).replace('"time_ns": 0', '"time_ns": ' + "9" * 5000), "4300 digits"),
    (json.dumps(GOOD).replace('"time_ns": 0', '"time_ns": ' + "9" * 4000), "integer (64-bit)"),
], ids=["bytes-text", "bytes-null", "bytes-1e999", "inf", "deep", "5000-digit-time", "huge-time"])
def test_malformed_trace_fields(tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str,
                                fragment: str) -> None:
    trace = tmp_path / "t.jsonl"
    trace.write_text(json.dumps({**GOOD, "kind": "panic", "actor": "cpu0"}) + "\n" + line + "\n")
    one_line_error(capsys, ["timeline", str(trace), "--perfetto", str(tmp_path / "o.json")], fragment)
