"""Durations as written in policies and on the command line: ``90s``, ``5m``, ``1h30m``, ``7d``, ``2w``."""
from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")


def parse_duration(text: str | int | float) -> timedelta:
    """Parse a duration; a bare number means seconds.

    >>> parse_duration("1h30m")
    datetime.timedelta(seconds=5400)
    >>> parse_duration("7d").days
    7
    >>> parse_duration(45)
    datetime.timedelta(seconds=45)
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text < 0:
            raise ValueError("a duration cannot be negative")
        return timedelta(seconds=text)
    s = str(text).strip().lower().replace(" ", "")
    if s.startswith("-"):
        raise ValueError(f"a duration cannot be negative: {text!r}")
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return timedelta(seconds=float(s))
    pos, total = 0, 0.0
    for m in _RE.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(s) or not s:
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 5m, 1h30m, 7d, 2w)")
    return timedelta(seconds=total)


def format_duration(td: timedelta | float) -> str:
    """Render a duration compactly.

    >>> format_duration(timedelta(seconds=5400))
    '1h30m'
    >>> format_duration(2.5)
    '2.5s'
    """
    secs = td.total_seconds() if isinstance(td, timedelta) else float(td)
    if secs < 60:
        return f"{secs:.1f}s".replace(".0s", "s")
    out, rest = "", int(round(secs))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            out += f"{rest // size}{unit}"
            rest %= size
    return out
