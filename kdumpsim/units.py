"""Sizes, durations and rates as people write them in kernel docs and YAML.

Sizes use the kernel's memparse() suffixes (K, M, G, T, binary), also written
as KiB/MiB/GiB. Durations are kept as integer nanoseconds so simulated times
are exact and traces byte-identical. Rates are bytes per second.
"""

from __future__ import annotations

import math
import re

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
NS_PER_S = 1_000_000_000

_SIZE_SUFFIX = {"": 1, "K": KiB, "M": MiB, "G": GiB, "T": TiB, "P": 1 << 50, "E": 1 << 60}
_SIZE_RE = re.compile(r"^\s*(0[xX][0-9a-fA-F]+|\d+(?:\.\d+)?)\s*([KMGTPE]?)(?:i?B)?\s*$")
_TIME_UNIT = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": NS_PER_S,
              "min": 60 * NS_PER_S}
_TIME_RE = re.compile(r"^\s*(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)\s*(ns|us|µs|ms|s|min)\s*$")
_RATE_UNIT = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12,
              "KiB": KiB, "MiB": MiB, "GiB": GiB, "TiB": TiB}
_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)/s\s*$")


def parse_size(value: int | str) -> int:
    """`32M`, `16MiB`, `0x1000000`, `4096` -> bytes (like the kernel's memparse)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size, got {value!r}")
    if isinstance(value, int):
        return value
    m = _SIZE_RE.match(str(value))
    if not m:
        raise ValueError(f"cannot parse size {value!r} (use e.g. 32M, 16MiB, 0x1000000)")
    number, suffix = m.groups()
    base = int(number, 16) if number.lower().startswith("0x") else float(number)
    size = base * _SIZE_SUFFIX[suffix.upper()]
    if size != int(size):
        raise ValueError(f"size {value!r} is not a whole number of bytes")
    return int(size)


def parse_duration(value: int | float | str) -> int:
    """`2us`, `1000ms`, `10s`, `-5ms` -> integer nanoseconds. Bare numbers are seconds."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration, got {value!r}")
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value * NS_PER_S):
            raise ValueError(f"duration {value!r} is too large" if value == value else "duration is not a number")
        return round(value * NS_PER_S)
    m = _TIME_RE.match(str(value))
    if not m:
        raise ValueError(f"cannot parse duration {value!r} (use e.g. 2us, 1ms, 10s)")
    number, unit = m.groups()
    ns = float(number) * _TIME_UNIT[unit]
    if not math.isfinite(ns):
        raise ValueError(f"duration {value!r} is too large")
    return round(ns)


def parse_rate(value: int | float | str) -> float:
    """`270MB/s`, `1GiB/s`, or a bare number of bytes per second."""
    if isinstance(value, bool):
        raise ValueError(f"expected a rate, got {value!r}")
    if isinstance(value, (int, float)):
        rate = float(value)
    else:
        m = _RATE_RE.match(str(value))
        if not m:
            raise ValueError(f"cannot parse rate {value!r} (use e.g. 270MB/s, 1GiB/s)")
        rate = float(m.group(1)) * _RATE_UNIT[m.group(2)]
    if rate <= 0:
        raise ValueError(f"rate must be positive, got {value!r}")
    return rate


def transfer_ns(nbytes: int, rate: float) -> int:
    """Simulated time to move `nbytes` at `rate` bytes/s, in whole nanoseconds."""
    return -(-nbytes * NS_PER_S // int(rate)) if rate == int(rate) else round(nbytes * NS_PER_S / rate)


def fmt_size(n: int) -> str:
    """Human size with binary suffix: 33554432 -> '32M'."""
    for suffix, unit in (("T", TiB), ("G", GiB), ("M", MiB), ("K", KiB)):
        if n and n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)


def fmt_duration_exact(ns: int) -> str:
    """A duration as a model file reads it back exactly: 5000000 -> '5ms', 1500 -> '1500ns'."""
    for unit, div in (("s", NS_PER_S), ("ms", 10**6), ("us", 10**3)):
        if ns and ns % div == 0:
            return f"{ns // div}{unit}"
    return f"{ns}ns"


def fmt_duration(ns: float, digits: int = 4, sep: str = " ", signed: bool = False) -> str:
    """A duration for a reader: 12300 -> '12.3 us'; signed: '+12.3 us'."""
    sign = ("+" if ns >= 0 else "-") if signed else ("-" if ns < 0 else "")
    a = abs(ns)
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("us", 1e3)):
        if a >= scale:
            return f"{sign}{a / scale:.{digits}g}{sep}{unit}"
    return f"{sign}{a:g}{sep}ns"
