"""The run's trace: every event (time, actor, kind, details) in order.

Actors use one dotted-free name per thing everywhere (`cpu3`, `nic0`,
`purgatory`, `capture`), shared with config keys and report fields.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

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
    """Append-only event log; events arrive in simulated-time order."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, time: int, actor: str, kind: str, **details: Any) -> None:
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


def read_jsonl(fh: IO[str]) -> list[Event]:
    """Load a trace written by write_jsonl."""
    events = []
    for line in fh:
        d = json.loads(line)
        time = d.pop("time_ns")
        d.pop("time", None)
        events.append(Event(time, d.pop("actor"), d.pop("kind"), d))
    return events
