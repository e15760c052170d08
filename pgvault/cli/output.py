"""Small helpers for printing: plain aligned tables and sizes. Library code returns data; only
CLI modules print."""
from __future__ import annotations

import json
import sys

import click


def human_size(n: float | None) -> str:
    """Bytes for humans.

    >>> human_size(1536)
    '1.5 KiB'
    """
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [len(h) for h in headers]
    for r in rows:
        for i, c in enumerate(r):
            widths[i] = max(widths[i], len(str(c)))
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(headers)] + [line(r) for r in rows])


def emit_json(doc) -> None:
    click.echo(json.dumps(doc, indent=2, default=str))


def warn(msg: str) -> None:
    click.echo(f"WARNING: {msg}", err=True)


def is_tty() -> bool:
    return sys.stderr.isatty()
