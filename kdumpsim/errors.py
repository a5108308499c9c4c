"""Every error a user can see, in one place with one import path.

Each carries what the CLI needs to print one line and pick the exit status
(2: bad input; 1: the run or the machine failed). All are picklable, so a
worker process can hand one back to the sweep that started it.
"""

from __future__ import annotations

import re
import unicodedata


class KdumpsimError(Exception):
    """Base of every user-facing error."""

    exit_status = 2

    def __reduce__(self):  # keep subclasses with several constructor arguments picklable
        return (_rebuild, (type(self), self.__dict__, self.args))


def _rebuild(cls: type[KdumpsimError], state: dict, args: tuple) -> KdumpsimError:
    err: KdumpsimError = Exception.__new__(cls)
    err.args = args
    err.__dict__.update(state)
    return err


class LayoutError(KdumpsimError):
    """An impossible machine or kexec layout (found while laying it out): says
    which field and why. Callers that know the file turn it into ConfigError."""

    def __init__(self, field: str, message: str):
        self.field, self.message = field, message
        super().__init__(field, message)      # both in args: SimPy re-raises a process's error as type(e)(*e.args)

    def __str__(self) -> str:
        return self.message


class ConfigError(KdumpsimError):
    """A bad model or experiment file: names the file, the dotted field and what is wrong."""

    def __init__(self, source: str, field: str, message: str):
        self.source, self.field, self.message = source, field, message
        where = f"{source}: {field}: " if field else f"{source}: "
        super().__init__(where + message)


class UsageError(KdumpsimError):
    """Bad command-line use: exit status 2, one clear message."""


class TraceError(KdumpsimError, ValueError):
    """A trace file that cannot be read: names the file and the line."""


class InspectError(KdumpsimError):
    """A file that cannot be summarised; the message names the offset when known."""

    def __init__(self, path: str, reason: str, offset: int | None = None) -> None:
        where = f"offset {offset:#x}: " if offset is not None else ""
        super().__init__(f"{path}: {where}{reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


class NoVmcore(KdumpsimError):
    """The run produced no /proc/vmcore (see its outcome)."""

    exit_status = 1


class SweepStopped(KdumpsimError):
    """The sweep stopped before its end (a worker or the scheduler lost, a disk
    full); the runs that finished are saved and --resume continues (exit status 1)."""

    exit_status = 1


class WorkerLost(SweepStopped):
    """The sweep stopped because a worker died; saved runs are kept (exit status 1)."""


# ---------------------------------------------------------------- text that reaches a terminal
_ASCII_UNSAFE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def printable(text: str) -> str:
    """`text` safe to print: control, format (bidi overrides, zero-width),
    separator and surrogate characters (undecodable file-name bytes) written as
    escapes such as \\x1b, so a crafted vmcore or model cannot retitle the
    terminal, move the cursor or fake a line. Newlines and tabs are kept."""
    if text.isascii() and not _ASCII_UNSAFE.search(text):
        return text
    return "".join(c if c in "\n\t" or not _unsafe(c) else _escape(c) for c in text)


def _unsafe(c: str) -> bool:
    if " " <= c <= "~":
        return False
    cat = unicodedata.category(c)
    return cat[0] == "C" or cat in ("Zl", "Zp")


def _escape(c: str) -> str:
    n = ord(c)
    if 0xDC80 <= n <= 0xDCFF:           # a byte that was not UTF-8 (os.fsdecode's surrogateescape)
        return f"\\x{n - 0xDC00:02x}"
    if n < 0x100:
        return f"\\x{n:02x}"
    return f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"
