"""Log sequence numbers: PostgreSQL's ``X/Y`` text and the integer pgvault computes with.

The one place LSN text is parsed and printed (segment names live in wal/names.py).
"""
from __future__ import annotations

import re

from .errors import UsageError

_LSN = re.compile(r"\s*([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})\s*")


def parse_lsn(text: str) -> int:
    """An LSN as PostgreSQL prints it, as an integer; bad text is a UsageError (exit 2).

    >>> parse_lsn("1/3000060")
    4345299040
    >>> parse_lsn("0/1BC7990")
    29129104
    >>> parse_lsn("nope")
    Traceback (most recent call last):
    ...
    pgvault.errors.UsageError: 'nope' is not an LSN
    """
    m = _LSN.fullmatch(text or "")
    if not m:
        raise UsageError(f"{text!r} is not an LSN", "write an LSN as PostgreSQL prints it, e.g. 0/3000060")
    return (int(m.group(1), 16) << 32) | int(m.group(2), 16)


def format_lsn(lsn: int) -> str:
    """An integer LSN as PostgreSQL prints it.

    >>> format_lsn(4345299040)
    '1/3000060'
    >>> format_lsn(0x100000028)
    '1/28'
    """
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"
