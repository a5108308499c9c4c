"""The run's trace: every event (time, actor, kind, details) in order.

Actors use one dotted-free name per thing everywhere (`cpu3`, `nic0`,
`purgatory`, `capture`), shared with config keys and report fields.
"""

from __future__ import annotations

import json
import math
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from kdumpsim.errors import TraceError
from kdumpsim.units import NS_PER_S


@dataclass(frozen=True, slots=True)
class Event:
    time: int          # simulated ns, 0 = the panic
    actor: str
    kind: str
    details: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"time": self.time / NS_PER_S, "time_ns": self.time, "actor": self.actor,
                "kind": self.kind, **self.details}


class Trace:
    """Append-only event log; events arrive in simulated-time order. A trace
    made with enabled=False (a sweep's runs: nobody reads it) keeps nothing,
    and hot paths skip building the details when `enabled` is false."""

    def __init__(self, enabled: bool = True) -> None:
        self.events: list[Event] = []
        self.enabled = enabled

    def __call__(self, time: int, actor: str, kind: str, **details: Any) -> None:
        if self.enabled:
            self.events.append(Event(time, actor, kind, details))

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events)

    def __len__(self) -> int:
        return len(self.events)

    def of_kind(self, kind: str) -> list[Event]:
        return [e for e in self.events if e.kind == kind]

    def first(self, kind: str, actor: str | None = None) -> Event | None:
        return next((e for e in self.events if e.kind == kind and (actor is None or e.actor == actor)), None)

    def write_jsonl(self, fh: IO[str]) -> None:
        for e in self.events:
            fh.write(json.dumps(e.as_dict(), sort_keys=True, separators=(",", ":")) + "\n")


# ------------------------------------------------------------------ reading
MAX_TRACE_BYTES = 256 << 20          # a trace of a big run is tens of MiB
MAX_TRACE_EVENTS = 2_000_000
NUMERIC_FIELDS = ("bytes", "addr", "cumulative_bytes", "start", "memsz", "dest", "pages")


def _read_text(path: str | Path) -> str:
    """The file's text: a regular file of at most MAX_TRACE_BYTES (never a FIFO or /dev/zero)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)   # a FIFO must not block the open
    except FileNotFoundError:
        raise TraceError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise TraceError(f"{path}: is a directory, not a trace file") from None
    except OSError as e:
        raise TraceError(f"{path}: cannot read: {e.strerror or e}") from None
    st = os.fstat(fd)
    if stat.S_ISDIR(st.st_mode):
        os.close(fd)
        raise TraceError(f"{path}: is a directory, not a trace file")
    with open(fd, "rb", closefd=True) as fh:
        if not stat.S_ISREG(st.st_mode):
            raise TraceError(f"{path}: not a regular file (a FIFO, device or socket); save the trace to a file")
        if st.st_size > MAX_TRACE_BYTES:
            raise TraceError(f"{path}: {st.st_size} bytes; a trace may have at most {MAX_TRACE_BYTES >> 20} MiB")
        try:
            data = fh.read(MAX_TRACE_BYTES + 1)
        except OSError as e:
            raise TraceError(f"{path}: cannot read: {e.strerror or e}") from None
    if len(data) > MAX_TRACE_BYTES:
        raise TraceError(f"{path}: a trace may have at most {MAX_TRACE_BYTES >> 20} MiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TraceError(f"{path}: not UTF-8 text (byte {e.start})") from None


def read_trace(path: str | Path) -> list[Event]:
    """Load a `kdumpsim run --trace` JSONL file; bad input raises TraceError."""
    text = _read_text(path)
    events = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise TraceError(f"{path}: line {n}: not JSON ({e.msg}); expected a trace from "
                             "`kdumpsim run MODEL --trace OUT.jsonl`") from None
        except ValueError as e:      # an integer of more than 4300 digits
            raise TraceError(f"{path}: line {n}: {str(e).split(';')[0]}") from None
        except RecursionError:
            raise TraceError(f"{path}: line {n}: JSON nested too deeply for a trace event") from None
        if not isinstance(d, dict):
            raise TraceError(f"{path}: line {n}: expected a JSON object, got {type(d).__name__}")
        missing = [k for k in ("time_ns", "actor", "kind") if k not in d]
        if missing:
            raise TraceError(f"{path}: line {n}: not a trace event (missing {', '.join(missing)})")
        t = d.pop("time_ns")
        if not isinstance(t, int) or isinstance(t, bool) or not -(1 << 63) <= t < 1 << 63:
            raise TraceError(f"{path}: line {n}: time_ns must be an integer (64-bit), got {str(t)[:40]}")
        d.pop("time", None)
        for key, value in d.items():
            if key in NUMERIC_FIELDS and (not isinstance(value, int) or isinstance(value, bool)
                                          or not -(1 << 64) < value < 1 << 64):
                raise TraceError(f"{path}: line {n}: {key} must be an integer, got {str(value)[:40]}")
            if isinstance(value, float) and not math.isfinite(value):
                raise TraceError(f"{path}: line {n}: {key} must be a finite number, got {value}")
        events.append(Event(t, str(d.pop("actor")), str(d.pop("kind")), d))
        if len(events) > MAX_TRACE_EVENTS:
            raise TraceError(f"{path}: more than {MAX_TRACE_EVENTS} events")
    if not events:
        raise TraceError(f"{path}: the trace has no events")
    return events
